"""One play session: the world, a backend, the profile's player id, and what the HUD shows.

:meth:`Session.step` advances the world, sends the player's answers as feedback, asks the
backend for the decisions NPCs need (one ``act_batch`` per archetype) and keeps per-NPC
records: rewards, recent observations and actions, action probabilities now and under
the base policy, KL to base, and the adapter versions at start.

Adaptation off: NPCs act as the player id ``<player>#base``, which never has an adapter,
so they play the base policy bit for bit. Those decisions and rewards are still recorded
in the interaction log, but their episodes are never closed, so the online trainer never
trains that id, and the profile's own adapter is left as it was (learning pauses).
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from dataclasses import dataclass, field

import numpy as np

from ..numerics import kl_rows
from . import rules
from .backend import Backend
from .world import Npc, Outcome, PlayerInput, World

log = logging.getLogger(__name__)

CONTROL_SUFFIX = "#base"
CURVE_POINTS = 240  # rolling reward curve length (decisions)
CURVE_WINDOW = 12  # rewards averaged per curve point
KL_OBSERVATIONS = 64  # an NPC's latest observations over which the HUD's KL is measured
PROBS_EVERY = 0.2  # seconds of game time between HUD probability refreshes
INFO_EVERY = 0.5
UNANSWERED = ("interrupted", "left", "bout abandoned")  # episode ends the player did not answer


@dataclass
class NpcTrack:
    """What one NPC did this session."""

    rewards: list[float] = field(default_factory=list)  # adapted-mode rewards, in order
    window: deque = field(default_factory=lambda: deque(maxlen=CURVE_WINDOW))
    curve: deque = field(default_factory=lambda: deque(maxlen=CURVE_POINTS))  # (mean reward, adapting)
    recent_obs: deque = field(default_factory=lambda: deque(maxlen=KL_OBSERVATIONS))
    decisions: int = 0
    last_action: int | None = None
    levels: tuple[int, ...] = (0, 0, 0)  # the situation the NPC sees: three levels, a haggler two
    now: np.ndarray | None = None  # (A,) probabilities on the current observation
    base: np.ndarray | None = None
    kl: float | None = None  # KL(now || base) on the current observation


class Session:
    """The glue between the world and npcadapt for one profile."""

    def __init__(self, world: World, backend: Backend, player: str, *, adapting: bool = True):
        self.world, self.backend, self.player = world, backend, player
        self.archetypes = sorted({n.archetype for n in world.npcs})
        for arch in self.archetypes:
            rules.check_layout(arch, backend.describe(arch))
        self.adapting = adapting
        self.tracks = {n.id: NpcTrack() for n in world.npcs}
        self._info: dict[str, dict | None] = {}
        self._prior: dict[str, dict | None] = {}
        self._info_at = -1e9
        self._probs_at = -1e9
        self.start_info = {a: self.adapter(a) for a in self.archetypes}
        self.decisions = 0
        self.feedbacks = 0

    @property
    def acting_player(self) -> str:
        return self.player if self.adapting else self.player + CONTROL_SUFFIX

    # -- the frame ----------------------------------------------------------------------------
    def step(self, dt: float, inp: PlayerInput) -> None:
        self._send(self.world.update(dt, inp))
        by_arch = defaultdict(list)
        for req in self.world.requests():
            by_arch[req.npc.archetype].append(req)
        for arch, reqs in by_arch.items():
            obs = np.stack([r.obs for r in reqs])  # (N, D)
            out = self.backend.act_batch(arch, [self.acting_player] * len(reqs), obs, npcs=[r.npc.id for r in reqs])
            for req, action in zip(reqs, out.action.tolist()):
                self.world.decided(req.npc, action, req.levels)
                tr = self.tracks[req.npc.id]
                tr.decisions += 1
                tr.last_action = action
                tr.recent_obs.append(req.obs)
            self.decisions += len(reqs)
        self.backend.train_pending()
        if self.world.time - self._probs_at >= PROBS_EVERY:
            self.refresh_probs()

    def _send(self, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        pid = self.acting_player
        self.backend.feedback_batch(
            [pid] * len(outcomes),
            [o.npc.id for o in outcomes],
            [o.reward for o in outcomes],
            [o.done and self.adapting for o in outcomes],
        )
        self.feedbacks += len(outcomes)
        for o in outcomes:
            tr = self.tracks[o.npc.id]
            if o.note not in UNANSWERED:
                tr.window.append(o.reward)
                tr.curve.append((float(np.mean(tr.window)), self.adapting))
                if self.adapting:
                    tr.rewards.append(o.reward)

    # -- controls ---------------------------------------------------------------------------
    def set_adapting(self, on: bool) -> None:
        """Toggle adaptation; open episodes end first, under the id that played them."""
        if on != self.adapting:
            self._send(self.world.end_episodes())
            if on:  # the base-policy episodes never end (never trained): let them go
                for arch in self.archetypes:
                    self.backend.reset_player(arch, self.player + CONTROL_SUFFIX)
            self.adapting = on
            self._probs_at = -1e9

    def erase(self) -> None:
        """Erase this profile's adapters (every archetype): the NPCs forget this player."""
        self.world.drop_episodes()
        for arch in self.archetypes:
            self.backend.reset_player(arch, self.player)
            self.backend.reset_player(arch, self.player + CONTROL_SUFFIX)
        self._info_at = self._probs_at = -1e9
        log.info("erased the adapters of %s", self.player)

    # -- what the HUD shows -------------------------------------------------------------------
    def adapter(self, archetype: str) -> dict | None:
        """The profile's adapter info for `archetype` (refreshed every half second of game time)."""
        self._refresh_info()
        return self._info.get(archetype)

    def prior(self, archetype: str) -> dict | None:
        """Where the profile stands on `archetype`'s population prior (refreshed with the adapter info)."""
        self._refresh_info()
        return self._prior.get(archetype)

    def _refresh_info(self) -> None:
        if self.world.time - self._info_at >= INFO_EVERY:
            self._info = {a: self.backend.adapter_info(a, self.player) for a in self.archetypes}
            self._prior = {a: self.backend.prior_info(a, self.player) for a in self.archetypes}
            self._info_at = self.world.time

    def _probs(self, archetype: str, obs: np.ndarray, *, base: bool) -> np.ndarray:
        """(N, A) the player's action probabilities (or the base's) on obs (N, D)."""
        return self.backend.action_probs(archetype, [self.player] * len(obs), obs, base=base)

    def refresh_probs(self) -> None:
        """Probabilities now and under the base on every NPC's current observation (batched)."""
        self._probs_at = self.world.time
        groups: dict[str, list[Npc]] = defaultdict(list)
        for npc in self.world.npcs:
            groups[npc.archetype].append(npc)
        for arch, npcs in groups.items():
            seen = [self.world.observe(n) for n in npcs]
            obs = np.stack([o for _, o in seen])
            base = self._probs(arch, obs, base=True)
            now = self._probs(arch, obs, base=False)
            for i, npc in enumerate(npcs):
                tr = self.tracks[npc.id]
                tr.levels = seen[i][0]
                tr.base, tr.now, tr.kl = base[i], now[i], float(kl_rows(now[i], base[i]))

    def summary(self) -> dict:
        """Per NPC: decisions, reward early vs late, KL, mean probabilities now vs base on what it saw."""
        infos = {a: self.backend.adapter_info(a, self.player) for a in self.archetypes}
        priors = {a: self.backend.prior_info(a, self.player) for a in self.archetypes}
        npcs = []
        for npc in self.world.npcs:
            tr = self.tracks[npc.id]
            r = tr.rewards
            third = max(len(r) // 3, 1)
            row = {
                "npc": npc.id,
                "name": npc.name,
                "archetype": npc.archetype,
                "decisions": tr.decisions,
                "answered": len(r),
                "reward_early": float(np.mean(r[:third])) if r else None,
                "reward_late": float(np.mean(r[-third:])) if r else None,
                "version_start": (self.start_info[npc.archetype] or {}).get("version", 0),
                "version": (infos[npc.archetype] or {}).get("version", 0),
                "updates": (infos[npc.archetype] or {}).get("updates", 0),
                "kl": None,
                "probs_now": None,
                "probs_base": None,
                "prior": priors[npc.archetype],
            }
            if tr.recent_obs:
                obs = np.stack(tr.recent_obs)
                now = self._probs(npc.archetype, obs, base=False)
                base = self._probs(npc.archetype, obs, base=True)
                row.update(
                    kl=float(kl_rows(now, base).mean()),
                    probs_now=now.mean(0).round(4).tolist(),
                    probs_base=base.mean(0).round(4).tolist(),
                )
            npcs.append(row)
        return {
            "player": self.player,
            "backend": self.backend.label,
            "npcs": npcs,
            "adapters": infos,
            "decisions": self.decisions,
            "feedback": self.feedbacks,
            "score": self.world.player.score,
            "game_seconds": self.world.time,
        }


def describe_prior(info: dict | None) -> str:
    """One line on a player's place on the population prior, for the HUD and the summary."""
    if info is None:
        return "no population prior"
    if info["episodes"] == 0:
        return f"population prior ({info['cohorts']} cohorts), no evidence yet"
    cohort = "personal" if info["cohort"] == info["cohorts"] else f"#{info['cohort']}"
    warm = f", warm from {'+'.join(info['warm_from'])}" if info.get("warm_from") else ""
    return f"{cohort}, {info['confidence']:.0%} sure, share {info['share']:.0%}{warm}"
