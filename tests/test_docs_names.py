"""The docs name only what exists: every backticked dotted `npcadapt.x.y` name imports, and
every backticked repository path (`npcadapt/server.py`, `clients/cpp/...`) is there."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "clients").glob("**/*.md"))]
TICKED = re.compile(r"`([^`\n]+)`")
DOTTED = re.compile(r"^npcadapt(?:\.[A-Za-z_][A-Za-z0-9_]*)+$")
PATH = re.compile(r"^(?:npcadapt|sim|tests|scripts|clients|assets|examples|docs)/[\w./-]*[\w/]$")
ENV_ID = re.compile(r"^npcadapt/[A-Z]\w*-v\d+$")  # a gymnasium id, not a path
FILE_SUFFIXES = (".py", ".gd", ".md", ".cs", ".hpp", ".cpp", ".toml", ".json", ".safetensors")


def resolve(dotted: str) -> bool:
    """Import the longest module prefix of `dotted`, then look the rest up as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def named_in_docs() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for token in TICKED.findall(doc.read_text()):
            token = token.strip().rstrip("()").split("(")[0]
            if ENV_ID.match(token) or (DOTTED.match(token) and token.endswith(FILE_SUFFIXES)):
                continue
            if DOTTED.match(token) or PATH.match(token):
                found.append((doc.relative_to(ROOT).as_posix(), token))
    return found


def test_docs_name_only_what_exists():
    names = named_in_docs()
    assert len(names) > 50  # the docs do name the code
    missing = sorted(
        {
            (doc, name)
            for doc, name in names
            if not (resolve(name) if DOTTED.match(name) else (ROOT / name.split("::")[0]).exists())
        }
    )
    assert not missing, missing
