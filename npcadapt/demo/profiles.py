"""Demo profiles: the people who play, by name, and the npcadapt player id of each.

A profile's player id is ``"demo:" + name.casefold()``, so "Ana" and "ana" are one
person and every profile has its own adapters (one per archetype) in the data
directory's adapter store. The list lives in ``DATA/demo_profiles.json`` (plain JSON,
written atomically) so the start screen can offer the names already played.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import InvalidInputError
from ..fileio import write_atomic

log = logging.getLogger(__name__)

FILE_NAME = "demo_profiles.json"
NAME_RE = re.compile(r"^[^\W_][\w .'-]{0,23}$")
PLAYER_PREFIX = "demo:"


def check_name(name: str) -> str:
    """A trimmed profile name, or InvalidInputError saying what is wrong with it."""
    name = " ".join(str(name).split())
    if not NAME_RE.match(name):
        raise InvalidInputError(
            f"profile name {name!r} must be 1-24 characters: letters, digits, spaces, _ . ' -, "
            "starting with a letter or digit"
        )
    return name


def player_id(name: str) -> str:
    """The npcadapt player id of profile `name` (case-insensitive)."""
    return PLAYER_PREFIX + check_name(name).casefold()


@dataclass
class Profile:
    name: str
    player: str
    created: float
    last_played: float
    sessions: int = 0


class Profiles:
    """The profile list of one data directory."""

    def __init__(self, data_dir: str | Path):
        self.path = Path(data_dir) / FILE_NAME
        self._items: dict[str, Profile] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            rows = json.loads(self.path.read_text("utf-8"))["profiles"]
            for row in rows:
                prof = Profile(**row)
                self._items[prof.player] = prof
        except (ValueError, KeyError, TypeError) as exc:
            bad = self.path.with_suffix(".bad")
            log.warning("profile list %s is unreadable (%s); moved to %s and starting a new list", self.path, exc, bad)
            self.path.replace(bad)
            self._items = {}

    def list(self) -> list[Profile]:
        """Profiles, most recently played first."""
        return sorted(self._items.values(), key=lambda p: -p.last_played)

    def get(self, name: str) -> Profile | None:
        return self._items.get(player_id(name))

    def open(self, name: str) -> Profile:
        """The profile called `name` (created if new), marked as played now and saved."""
        name = check_name(name)
        pid = player_id(name)
        now = time.time()
        prof = self._items.get(pid) or Profile(name, pid, created=now, last_played=now)
        prof.last_played = now
        prof.sessions += 1
        self._items[pid] = prof
        self.save()
        return prof

    def save(self) -> None:
        """Write the list atomically (temp file, fsync, rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps({"profiles": [asdict(p) for p in self.list()]}, indent=1))
