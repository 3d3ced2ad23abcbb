"""Recorded sessions: turn interaction-log records back into per-player episodes.

The log holds one ``decisions`` record per act_batch and one ``feedback`` record per
feedback_batch (see :mod:`npcadapt.service`). Replaying them in order through an
:class:`~npcadapt.episodes.EpisodeTracker` rebuilds exactly the episodes the online
trainer saw. Corrupt or torn records are skipped and counted, never fatal.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .episodes import Episode, EpisodeTracker
from .errors import InvalidInputError
from .log import read_records

log = logging.getLogger(__name__)


@dataclass
class RecordingSummary:
    """What reading a log directory found."""

    records: int = 0
    decisions: int = 0
    feedback: int = 0
    corrupt_records: int = 0
    torn_tail_bytes: int = 0
    orphan_feedback: int = 0  # feedback with no decision to attach to
    open_episodes: int = 0  # decisions whose episode never ended
    bases: Counter = field(default_factory=Counter)  # base hash -> decisions recorded against it
    episodes: int = 0
    players: int = 0

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out["bases"] = dict(self.bases)
        return out


def _decision_rows(record: dict, wanted) -> tuple | None:
    """Arrays of one decisions record, filtered to the wanted (archetype, player) keys."""
    archetype, players = record["archetype"], record["players"]
    keep = [i for i, p in enumerate(players) if wanted(archetype, p)]
    if not keep:
        return None
    n, dim = len(players), int(record["obs_dim"])
    obs = np.frombuffer(record["obs"], np.float32).reshape(n, dim)
    mask = None if record["mask"] is None else np.frombuffer(record["mask"], bool).reshape(n, -1)
    cols = [
        np.frombuffer(record[k], dt)
        for k, dt in (("action", np.int64), ("logp", np.float32), ("value", np.float32), ("decision", np.int64))
    ]
    pick = lambda a: None if a is None else a[keep]
    return (
        archetype,
        [players[i] for i in keep],
        [record["npcs"][i] for i in keep],
        pick(obs),
        pick(mask),
        *(c[keep] for c in cols),
    )


def read_episodes(
    logs: str | Path,
    *,
    archetypes: Iterable[str] | None = None,
    players: Iterable[str] | None = None,
) -> tuple[dict[tuple[str, str], list[Episode]], RecordingSummary]:
    """Completed episodes per (archetype, player) from a log directory, and a summary."""
    logs = Path(logs)
    if not logs.is_dir():
        raise InvalidInputError(f"log directory {logs} does not exist")
    arch_set = None if archetypes is None else set(archetypes)
    player_set = None if players is None else set(players)

    def wanted(archetype: str, player: str) -> bool:
        return (arch_set is None or archetype in arch_set) and (player_set is None or player in player_set)

    summary = RecordingSummary()
    tracker = EpisodeTracker()

    def corrupt(bad) -> None:
        summary.corrupt_records += 1
        log.warning("skipping corrupt log record at %s:%d (%s)", bad.segment, bad.offset, bad.reason)

    def torn(tail) -> None:
        summary.torn_tail_bytes += tail.bytes

    for record in read_records(logs, on_corrupt=corrupt, on_torn=torn):
        summary.records += 1
        try:
            kind = record.get("t")
            if kind == "decisions":
                summary.decisions += len(record["players"])
                summary.bases[record["base"]] += len(record["players"])
                rows = _decision_rows(record, wanted)
                if rows is not None:
                    tracker.record(*rows)
            elif kind == "feedback":
                for p, npc, r, d in zip(record["players"], record["npcs"], record["reward"], record["done"]):
                    summary.feedback += 1
                    try:
                        tracker.feedback(p, npc, r, d)
                    except InvalidInputError:
                        summary.orphan_feedback += 1
        except (KeyError, TypeError, ValueError) as exc:  # a well-framed record of the wrong shape
            summary.corrupt_records += 1
            log.warning("skipping malformed log record: %r", exc)
    summary.open_episodes = tracker.open_count()
    episodes = tracker.take(tracker.ready(1))
    summary.episodes = sum(len(v) for v in episodes.values())
    summary.players = len(episodes)
    return episodes, summary
