"""Layers point down only: no npcadapt module imports from a layer above its own, and the
`sim` package (gymnasium envs) imports nothing from npcadapt. docs/architecture.md draws
the same layers; a new module must be placed in LAYERS below."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module may import from its own layer and the ones before it. A name that
# ends with "." covers a package and everything in it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "core: errors, ids, plain data, numerics",
        (
            "errors",
            "types",
            "fileio",
            "coalesce",
            "config",
            "sampling",
            "numerics",
            "fit_report",
            "adapter_meta",
            "batch_checks",
            "input_budget",
            "allocator",
            "lora.functional",
            "prior.bayes",
            "lora",
            "prior",
        ),
    ),  # the two package inits hold only docstrings
    (
        "model and storage",
        (
            "policy",
            "lora.layout",
            "lora.bank",
            "lora.forward",
            "lora.numpy_forward",
            "archetypes",
            "episodes",
            "log.",
            "store",
            "stores",
            "store_redis",
            "writeback",
            "recordings",
            "envs",
            "protocol",
            "protocol_headers",
            "protocol_codec",
            "host",
        ),
    ),
    ("engine", ("engine", "export", "prior.head")),
    ("training", ("training.", "prior.library", "prior.library_file", "prior.trust", "prior.trainer", "lease")),
    ("service", ("service",)),
    (
        "bridge and applications",
        ("rpc", "server", "bridge_connection", "micro_batcher", "client", "simulation", "demo."),
    ),
    ("benchmarks", ("bench.",)),
    ("command line", ("cli.",)),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from . import x`
    return found


def layer_of(module: str) -> int | None:
    """Layer index of an npcadapt module ("npcadapt.x.y"), None for the package itself."""
    inner = module.removeprefix("npcadapt").removeprefix(".")
    if not inner:
        return None
    exact = {name.rstrip("."): i for i, (_, names) in enumerate(LAYERS) for name in names}
    if inner in exact:
        return exact[inner]
    for index, (_, names) in enumerate(LAYERS):  # inside a package given as "x."
        if any(name.endswith(".") and inner.startswith(name) for name in names):
            return index
    parent = inner.rpartition(".")[0]  # a symbol imported from a module: `from .engine import Engine`
    if parent in exact and not (ROOT / "npcadapt" / parent.replace(".", "/")).is_dir():  # not a new module of a package
        return exact[parent]
    return -1


def npcadapt_modules() -> list[Path]:
    return sorted((ROOT / "npcadapt").rglob("*.py"))


def test_every_module_has_a_layer():
    unplaced = [module_name(p) for p in npcadapt_modules() if layer_of(module_name(p)) == -1]
    assert not unplaced, f"place these in tests/test_layers.py LAYERS: {unplaced}"


def test_imports_point_down():
    upward = []
    for path in npcadapt_modules():
        own = layer_of(module_name(path))
        if own is None or own == -1:  # the package init re-exports lazily; unplaced: the test above
            continue
        for target in imported(path):
            if not target.startswith("npcadapt."):
                continue
            layer = layer_of(target)
            if layer is not None and layer > own:
                upward.append(f"{module_name(path)} ({LAYERS[own][0]}) imports {target} ({LAYERS[layer][0]})")
    assert not upward, "\n".join(sorted(set(upward)))


def test_sim_imports_nothing_from_npcadapt():
    offenders = [
        f"{p.relative_to(ROOT)}: {t}"
        for p in sorted((ROOT / "sim").rglob("*.py"))
        for t in imported(p)
        if t == "npcadapt" or t.startswith("npcadapt.")
    ]
    assert not offenders, offenders


def test_the_layering_check_can_fail():
    """The checker reads relative imports and orders layers as drawn (a guard against a
    check that passes on everything)."""
    assert "npcadapt.service" in imported(ROOT / "npcadapt" / "rpc.py")  # `from .service import ...`
    assert layer_of("npcadapt.cli.run") > layer_of("npcadapt.service") > layer_of("npcadapt.engine")
    assert layer_of("npcadapt.engine") > layer_of("npcadapt.errors") >= 0
    assert layer_of("npcadapt.engine.Engine") == layer_of("npcadapt.engine")  # `from .engine import Engine`
    assert layer_of("npcadapt.no_such_module") == -1
    assert layer_of("npcadapt.prior.no_such_module") == -1  # a new module of a package must be placed too


def test_long_modules_say_why():
    """No module over ~450 lines unless its docstring gives the reason ("Over 450 lines: ...")."""
    unexplained = []
    for path in [*npcadapt_modules(), *sorted((ROOT / "sim").rglob("*.py"))]:
        text = path.read_text()
        if text.count("\n") > 450 and "Over 450 lines:" not in (ast.get_docstring(ast.parse(text)) or ""):
            unexplained.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert not unexplained, unexplained
