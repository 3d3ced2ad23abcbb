"""Where the demo's NPC decisions come from: the engine in-process, or a bridge over a socket.

Both implementations are a :class:`Backend`: a :class:`~npcadapt.host.Host` (batched
decisions, feedback, training, action probabilities, adapted and base, for the HUD) with
what the demo shows and manages besides (archetype description, adapter and prior info,
reset, flush, close). In-process (:class:`LocalBackend`) wraps :class:`npcadapt.Service` with recording
on and online training in a background thread. Over the socket (:class:`SocketBackend`)
every call goes through :class:`npcadapt.client.Client` exactly as a game engine's would;
the server records the session and trains, and the HUD's probabilities come from the
bridge's ``action_probs`` method.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ..client import Client
from ..errors import InvalidInputError, NpcAdaptError
from ..host import Host
from ..service import Service
from ..training.online import OnlineConfig
from ..types import BatchDecision

log = logging.getLogger(__name__)
# A demo session lasts minutes, not hundreds of episodes, and its bot keeps one style: the
# PPO trainer's exploration bonus (which pays off over a long relationship) is off, and the
# population prior's tilt is trusted from the first episode (a merchant meets the player a
# handful of times a minute) instead of after the couple of consistent episodes a server's
# default waits for. What it learnt fades only when the bot surprises it (the server's
# default since session 12; at 45 s it moved the duelists from 9 to 12 of 12 seeds and the
# merchants from 8 to 11: docs/benchmarks.md, session 11), and slowly then (prior_decay).
DEFAULT_ONLINE = OnlineConfig(
    ent_coef=0.0,
    prior_trust_test="sum",
    prior_trust_open=-3.0,
    prior_trust_nats=2.0,
    prior_decay=0.99,
    prior_explore=False,
    prior_trust_null="widened",
)
DEMO_SETTINGS = (
    "ent_coef",
    "prior_trust_test",
    "prior_trust_open",
    "prior_trust_nats",
    "prior_decay",
    "prior_explore",
    "prior_trust_null",
)  # what the demo changes from the defaults


class Backend(Host, Protocol):
    """The npcadapt surface the demo uses: a Host, and what the demo shows and manages."""

    label: str  # where decisions come from, for the HUD

    def act_batch(self, archetype: str, players: Sequence[str], obs, *, npcs: Sequence[str]) -> BatchDecision:
        """As :meth:`npcadapt.Service.act_batch`."""
        ...

    def describe(self, archetype: str) -> dict:
        """The archetype's plain-data summary (``Archetype.describe``: observation layout, actions)."""
        ...

    def adapter_info(self, archetype: str, player: str) -> dict | None: ...

    def prior_info(self, archetype: str, player: str) -> dict | None:
        """Where the player stands on the archetype's population prior (None: no prior)."""
        ...

    def reset_player(self, archetype: str, player: str) -> bool: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class LocalBackend(Backend):
    """The engine in this process, recorded to DATA/logs.

    `train`: "background" runs online updates in a thread while frames keep coming (the
    window game); "sync" runs them only when :meth:`train_pending` is called (headless runs at
    full speed, so that updates keep pace with simulated time and runs are reproducible).
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        seed: int = 0,
        online: OnlineConfig | None = DEFAULT_ONLINE,
        train: str = "background",
    ):
        if train not in ("background", "sync"):
            raise InvalidInputError(f"train must be 'background' or 'sync', got {train!r}")
        self.service = Service(data_dir, seed=seed, online=online, record=True)
        self.label = f"in-process ({self.service.data_dir})"
        self.sync = train == "sync"
        if online is not None and not self.sync:
            self.service.start_background_training()

    def train_pending(self) -> int:
        """One player's update now with synchronous training; nothing with background training."""
        return self.service.train_pending(max_players=1) if self.sync else 0

    def describe(self, archetype: str) -> dict:
        return self.service.archetypes[archetype].describe()

    def act_batch(self, archetype: str, players: Sequence[str], obs, *, npcs: Sequence[str]) -> BatchDecision:
        return self.service.act_batch(archetype, list(players), obs, npcs=list(npcs))

    def feedback_batch(self, players: Sequence[str], npcs: Sequence[str], rewards, dones) -> None:
        self.service.feedback_batch(list(players), list(npcs), rewards, dones)

    def action_probs(self, archetype: str, players: Sequence[str], obs, *, base: bool = False) -> np.ndarray:
        return self.service.action_probs(archetype, list(players), np.asarray(obs, np.float32), base=base)

    def adapter_info(self, archetype, player) -> dict | None:
        info = self.service.adapter_info(archetype, player)
        return None if info is None else info.to_dict()

    def prior_info(self, archetype, player) -> dict | None:
        return self.service.prior_info(archetype, player)

    def reset_player(self, archetype, player) -> bool:
        return self.service.reset_player(archetype, player)

    def flush(self) -> None:
        self.service.flush()

    def close(self) -> None:
        self.service.close()


class SocketBackend(Backend):
    """A running ``npcadapt serve`` bridge, through the Python client."""

    def __init__(self, host: str, port: int, *, token: str | None = None):
        try:
            self.client = Client(host, port, token=token, timeout=10.0)
        except OSError as exc:
            raise NpcAdaptError(
                f"cannot connect to the npcadapt bridge at {host}:{port} ({exc}); "
                f"start one with `npcadapt serve --port {port}`"
            ) from None
        self.label = f"socket bridge {host}:{port}"
        self._described = {a["name"]: a for a in self.client.archetypes()}

    def describe(self, archetype: str) -> dict:
        return self._described[archetype]

    def act_batch(self, archetype: str, players: Sequence[str], obs, *, npcs: Sequence[str]) -> BatchDecision:
        rows = [[p, n, np.asarray(o, np.float32)] for p, n, o in zip(players, npcs, obs)]
        replies = self.client.act_batch(archetype, rows)

        def column(key: str, dtype: type) -> np.ndarray:
            return np.array([r[key] for r in replies], dtype)

        return BatchDecision(
            decision=column("decision", np.int64),
            action=column("action", np.int64),
            logp=column("logp", np.float32),
            value=column("value", np.float32),
            entropy=column("entropy", np.float32),
            adapter_version=column("adapter_version", np.int64),
            action_names=tuple(self._described[archetype]["actions"]),
        )

    def feedback_batch(self, players: Sequence[str], npcs: Sequence[str], rewards, dones) -> None:
        for p, n, r, d in zip(players, npcs, rewards, dones):
            self.client.feedback(p, n, float(r), bool(d))  # notifications: no round trip

    def train_pending(self) -> int:
        """The bridge trains on its own: nothing to run here."""
        return 0

    def action_probs(self, archetype: str, players: Sequence[str], obs, *, base: bool = False) -> np.ndarray:
        rows = [[p, np.ascontiguousarray(o, "<f4").tobytes()] for p, o in zip(players, np.asarray(obs, np.float32))]
        return np.asarray(self.client.call("action_probs", archetype, rows, {"base": bool(base)}), np.float64)

    def adapter_info(self, archetype, player) -> dict | None:
        return self.client.adapter_info(archetype, player)

    def prior_info(self, archetype, player) -> dict | None:
        return self.client.prior_info(archetype, player)

    def reset_player(self, archetype, player) -> bool:
        return bool(self.client.reset_player(archetype, player))

    def flush(self) -> None:
        self.client.flush()

    def close(self) -> None:
        try:
            self.flush()
        except (OSError, NpcAdaptError) as exc:  # the bridge went away: it flushes on its own shutdown
            log.warning("could not ask the bridge to flush: %s", exc)
        finally:
            self.client.close()


def parse_address(text: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port); raises InvalidInputError naming the problem."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInputError(f"--connect expects HOST:PORT (e.g. 127.0.0.1:7777), got {text!r}")
    return host.strip("[]"), int(port)
