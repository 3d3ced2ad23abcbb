"""Recorded sessions: turn interaction-log records back into per-player episodes.

The log holds one ``decisions`` record per act_batch and one ``feedback`` record per
feedback_batch (see :mod:`npcadapt.service`). Replaying them in order through an
:class:`~npcadapt.episodes.EpisodeTracker` rebuilds exactly the episodes the online
trainer saw. Corrupt or torn records are skipped and counted, never fatal.

Several servers' logs (one directory each) are replayed one directory at a time, as each
server tracked its own episodes, and each player's episodes from all of them are merged
in the order they ended (the time of the feedback record that closed each one).
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
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


Key = tuple[str, str]  # (archetype, player)


def read_episodes(
    logs: str | Path | Sequence[str | Path],
    *,
    archetypes: Iterable[str] | None = None,
    players: Iterable[str] | None = None,
) -> tuple[dict[Key, list[Episode]], RecordingSummary]:
    """Completed episodes per (archetype, player) from a log directory, or from several
    (one per server: each player's episodes merged in the order they ended), and a summary
    of them all."""
    dirs = [Path(logs)] if isinstance(logs, (str, Path)) else [Path(d) for d in logs]
    if not dirs:
        raise InvalidInputError("no log directory given")
    dirs = list({d.resolve(): d for d in dirs}.values())  # the same directory twice: read once
    for d in dirs:
        if not d.is_dir():
            raise InvalidInputError(f"log directory {d} does not exist")
    arch_set = None if archetypes is None else set(archetypes)
    player_set = None if players is None else set(players)

    def wanted(archetype: str, player: str) -> bool:
        return (arch_set is None or archetype in arch_set) and (player_set is None or player in player_set)

    summary = RecordingSummary()
    timed: dict[Key, list[list[tuple[float, Episode]]]] = {}  # per key, per directory: (end time, episode)
    for d in dirs:
        for key, eps in _replay(d, wanted, summary).items():
            timed.setdefault(key, []).append(eps)
    episodes = {key: [ep for _, ep in heapq.merge(*runs, key=lambda te: te[0])] for key, runs in timed.items()}
    summary.episodes = sum(len(v) for v in episodes.values())
    summary.players = len(episodes)
    return episodes, summary


def _replay(logs: Path, wanted, summary: RecordingSummary) -> dict[Key, list[tuple[float, Episode]]]:
    """One directory's completed episodes with the time each ended, in that order; counts
    into `summary`."""
    tracker = EpisodeTracker()
    archetype_of: dict[tuple[str, str], str] = {}  # (player, npc) -> archetype of its open episode
    ended: dict[Key, list[float]] = {}  # per key, the time each completed episode ended

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
                    archetype_of.update(((p, npc), rows[0]) for p, npc in zip(rows[1], rows[2]))
            elif kind == "feedback":
                when = _time(record)
                for p, npc, r, d in zip(record["players"], record["npcs"], record["reward"], record["done"]):
                    summary.feedback += 1
                    try:
                        tracker.feedback(p, npc, r, d)
                    except InvalidInputError:
                        summary.orphan_feedback += 1
                        continue
                    if d:
                        ended.setdefault((archetype_of[(p, npc)], p), []).append(when)
        except (KeyError, TypeError, ValueError) as exc:  # a well-framed record of the wrong shape
            summary.corrupt_records += 1
            log.warning("skipping malformed log record: %r", exc)
    summary.open_episodes += tracker.open_count()
    episodes = tracker.take(tracker.ready(1))  # each key's in the order they completed
    return {key: list(zip(ended[key], eps, strict=True)) for key, eps in episodes.items()}


def _time(record: dict) -> float:
    """A record's wall-clock time (0 if it has none: it sorts first)."""
    try:
        return float(record.get("time", 0.0))
    except (TypeError, ValueError):
        return 0.0
