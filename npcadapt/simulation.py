"""The simulation loop: many simulated players at once through the npcadapt API.

The envs come from :mod:`npcadapt.envs` (``gymnasium.make``); everything the loop knows
about players (the named, held-out and switching personas, the controls "average" and
"noise", the traits shared across envs) and the exact oracles it measures with are the
env's public attributes and methods on ``env.unwrapped``.

Each player is a persona in its own env instance. Every step, all active players' NPC
observations go to the host in one ``act_batch``; envs step; rewards and episode ends go
back as ``feedback_batch``; the host's online trainer updates adapters of players with
enough completed episodes. After every episode the exact expected return of each
player's current policy is computed from the env's situation table, so curves are
noise-free measurements, not sampled returns.

The host is any :class:`~npcadapt.host.Host`: ``npcadapt.Service``, or a benchmark's
full fine-tune host or Thompson-sampling baseline.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np

from .envs import game, sim_env
from .envs import make as make_env
from .errors import InvalidInputError
from .host import Host
from .numerics import kl_rows

log = logging.getLogger(__name__)


@dataclass
class PlayerTrack:
    """One simulated player's history.

    ``kind`` is "named" (a persona of the population), "heldout" (a persona the base and
    any population data never saw), "switch" (plays ``persona`` until episode
    ``switch_at``, then ``switch_to``) or "control" ("average" and "noise").
    """

    player: str
    persona: str
    kind: str = "named"
    switch_to: str | None = None
    switch_at: int | None = None
    returns: list[float] = field(default_factory=list)  # realised return per episode
    expected: list[float] = field(default_factory=list)  # exact expected return after each episode
    kl_to_base: float = 0.0

    @property
    def group(self) -> str:
        """The report's key: the persona, or "before>after" for a switching player."""
        return f"{self.persona}{SWITCH_MARK}{self.switch_to}" if self.switch_to else self.persona

    def persona_at(self, episode: int) -> str:
        """The persona acting in (0-based) `episode`."""
        if self.switch_to is not None and self.switch_at is not None and episode >= self.switch_at:
            return self.switch_to
        return self.persona


SWITCH_MARK = ">"


def persona_names(env: gym.Env) -> tuple[str, ...]:
    """The env's named personas, then 'average' and 'noise'."""
    base = sim_env(env)
    return (*base.PERSONAS, base.AVERAGE, base.NOISE)


def assign_personas(env: gym.Env, players: int, counts: dict[str, int] | None = None) -> list[tuple[str, str]]:
    """(player id, persona) pairs, cycling through :func:`persona_names`.

    `counts` overrides how many players a persona gets (e.g. more 'average' players, whose
    figure is noisier); the others keep the cycling share of `players`.
    """
    personas = persona_names(env)
    pairs = [
        (f"{personas[i % len(personas)]}-{i // len(personas)}", personas[i % len(personas)]) for i in range(players)
    ]
    if not counts:
        return pairs
    unknown = set(counts) - set(personas)
    if unknown:
        raise InvalidInputError(f"unknown personas in counts: {sorted(unknown)}; env has {list(personas)}")
    kept = [pair for pair in pairs if pair[1] not in counts]
    return kept + [(f"{name}-{j}", name) for name, n in counts.items() for j in range(n)]


def make_tracks(
    env: gym.Env,
    players: int,
    episodes: int,
    *,
    counts: dict[str, int] | None = None,
    heldout_players: int = 0,
    switch_players: int = 0,
    switch_at: int | None = None,
) -> list[PlayerTrack]:
    """Every simulated player: the cycling population (:func:`assign_personas`), then
    `heldout_players` per held-out persona and `switch_players` per switch pair of the env
    (switching at `switch_at`, default half way)."""
    base = sim_env(env)
    tracks = [
        PlayerTrack(p, persona, "control" if persona in (base.AVERAGE, base.NOISE) else "named")
        for p, persona in assign_personas(env, players, counts)
    ]
    tracks += [
        PlayerTrack(f"{name}-{j}", name, "heldout") for name in base.HELDOUT_PERSONAS for j in range(heldout_players)
    ]
    at = episodes // 2 if switch_at is None else switch_at
    tracks += [
        PlayerTrack(f"{a}{SWITCH_MARK}{b}-{j}", a, "switch", b, at)
        for a, b in base.SWITCHES
        for j in range(switch_players)
    ]
    return tracks


def trait_players(env_id: str, per_trait: int, prefix: str = "player") -> dict[str, str]:
    """{track name: player id} for `per_trait` players per latent trait of the env
    (``env.unwrapped.TRAITS``: trait -> the named persona it plays there): the same ids in
    every env, so one person meets every archetype as the same player (``player_ids``)."""
    traits = game(env_id).TRAITS
    return {f"{persona}-{j}": f"{prefix}-{trait}-{j}" for trait, persona in traits.items() for j in range(per_trait)}


def trait_counts(env_id: str, per_trait: int) -> dict[str, int]:
    """``persona_counts`` for :func:`run_simulation`: `per_trait` players of each trait's persona."""
    return dict.fromkeys(game(env_id).TRAITS.values(), per_trait)


class Evaluator:
    """Exact expected return and KL-to-base of many players' current policies."""

    def __init__(self, env: gym.Env):
        self.env = sim_env(env)
        situations = self.env.situations()
        self.obs = np.stack([o for o, _ in situations]).astype(np.float32)  # (S, D)
        self.weights = np.array([w for _, w in situations], dtype=np.float64)  # (S,)

    def _probs(self, host: Host, archetype: str, players: list[str], base: bool) -> np.ndarray:
        n, s = len(players), len(self.obs)
        rows = [p for p in players for _ in range(s)]
        probs = host.action_probs(archetype, rows, np.tile(self.obs, (n, 1)), base=base)
        return probs.reshape(n, s, -1)  # (n, S, A)

    def expected_returns(self, host: Host, archetype: str, players: list[str], personas: list[str]) -> np.ndarray:
        """(n,) exact expected return of each player's current policy against their persona."""
        probs = self._probs(host, archetype, players, False)
        return np.array([self.env.expected_return(persona, p) for persona, p in zip(personas, probs)])

    def base_returns(self, host: Host, archetype: str, personas: list[str]) -> dict[str, float]:
        """Exact expected return of the base policy against each persona."""
        probs = self._probs(host, archetype, ["base"], True)[0]  # (S, A)
        return {persona: self.env.expected_return(persona, probs) for persona in personas}

    def kl_to_base(self, host: Host, archetype: str, players: list[str]) -> np.ndarray:
        """Situation-weighted mean KL(policy || base) per player, nats."""
        p = self._probs(host, archetype, players, False)  # (n, S, A)
        q = self._probs(host, archetype, ["base"], True)  # (1, S, A): the base is the same for everyone
        return (kl_rows(p, q) * self.weights).sum(-1) / self.weights.sum()


def run_simulation(
    host: Host,
    env_id: str,
    archetype: str,
    *,
    players: int = 64,
    episodes: int = 200,
    seed: int = 0,
    train: bool = True,
    on_episode: Callable[[int], None] | None = None,
    persona_counts: dict[str, int] | None = None,
    heldout_players: int = 0,
    switch_players: int = 0,
    switch_at: int | None = None,
    player_ids: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Play `episodes` episodes for each simulated player; return the report.

    Players: `players` cycling through the named personas, average and noise
    (`persona_counts` overrides a persona's count), plus `heldout_players` per held-out
    persona and `switch_players` per switch pair (see :func:`make_tracks`). The host sees
    each player as their track name ("brawler-0"), or as ``player_ids[name]`` where given
    (so the same person can play several envs, see :func:`trait_players`).
    """
    start = time.perf_counter()
    probe = make_env(env_id)
    tracks = make_tracks(
        probe,
        players,
        episodes,
        counts=persona_counts,
        heldout_players=heldout_players,
        switch_players=switch_players,
        switch_at=switch_at,
    )
    envs = [make_env(env_id, persona=t.persona) for t in tracks]
    evaluator = Evaluator(probe)
    every_persona = list(dict.fromkeys(p for t in tracks for p in (t.persona, t.switch_to) if p))
    base_returns = evaluator.base_returns(host, archetype, every_persona)
    ids = [(player_ids or {}).get(t.player, t.player) for t in tracks]
    decisions = 0
    for episode in range(episodes):
        first_obs = []
        for i, (env, track) in enumerate(zip(envs, tracks)):
            switch = {"persona": track.switch_to} if track.switch_to and episode == track.switch_at else None
            first_obs.append(env.reset(seed=seed * 100_003 + i if episode == 0 else None, options=switch)[0])
        obs = np.stack(first_obs)
        active = np.arange(len(envs))
        totals = np.zeros(len(envs))
        while active.size:
            act_ids = [ids[i] for i in active]
            npcs = ["npc"] * len(active)
            out = host.act_batch(archetype, act_ids, obs[active], npcs=npcs)
            decisions += len(active)
            rewards, dones = np.zeros(len(active)), np.zeros(len(active), bool)
            for j, k in enumerate(active):
                next_obs, reward, terminated, truncated, _ = envs[k].step(int(out.action[j]))
                obs[k], rewards[j], dones[j] = next_obs, reward, terminated or truncated
            totals[active] += rewards
            host.feedback_batch(act_ids, npcs, rewards, dones)
            active = active[~dones]
        if train:
            host.train_pending()
        expected = evaluator.expected_returns(host, archetype, ids, [t.persona_at(episode) for t in tracks])
        for t, total, exp in zip(tracks, totals, expected):
            t.returns.append(float(total))
            t.expected.append(float(exp))
        if on_episode:
            on_episode(episode)
    kls = evaluator.kl_to_base(host, archetype, ids)
    for t, kl in zip(tracks, kls):
        t.kl_to_base = float(kl)
    seconds = time.perf_counter() - start
    oracles = {persona: float(sim_env(probe).oracle_return(persona)) for persona in every_persona}
    report = build_report(tracks, base_returns, oracles)
    report.update(
        env=env_id,
        archetype=archetype,
        players=len(tracks),
        episodes_per_player=episodes,
        seed=seed,
        seconds=round(seconds, 2),
        decisions_per_s=round(decisions / seconds),
    )
    return report


def _gain_curve(track: PlayerTrack, base_returns: dict[str, float], oracles: dict[str, float]) -> np.ndarray | None:
    """(episodes,) share of the gap from base to oracle closed after each episode, against
    the persona acting then; None where the persona has no gap (noise)."""
    gains = []
    for e, value in enumerate(track.expected):
        persona = track.persona_at(e)
        gap = oracles[persona] - base_returns[persona]
        if abs(gap) <= 1e-6:
            return None
        gains.append((value - base_returns[persona]) / gap)
    return np.array(gains)


def recovery_episodes(gain_curve: list[float], switch_at: int, threshold: float = 0.8) -> int | None:
    """Episodes played as the new persona until the gain is back to `threshold` (None: never)."""
    for e in range(switch_at, len(gain_curve)):
        if gain_curve[e] >= threshold:
            return e - switch_at + 1
    return None


def build_report(
    tracks: list[PlayerTrack], base_returns: dict[str, float], oracles: dict[str, float]
) -> dict[str, Any]:
    """Per-persona figures (curves, gains, KL, experienced return), then summaries per kind."""
    personas: dict[str, dict] = {}
    for group in dict.fromkeys(t.group for t in tracks):
        members = [t for t in tracks if t.group == group]
        first = members[0]
        final = first.persona_at(len(first.expected) - 1)
        base, oracle = base_returns[final], oracles[final]
        adapted = float(np.mean([t.expected[-1] for t in members]))
        curves = [_gain_curve(t, base_returns, oracles) for t in members]
        # a group's members play the same personas, so either every curve is None or none is
        gain_curve = None if curves[0] is None else np.mean(cast(list[np.ndarray], curves), axis=0)
        entry = {
            "kind": first.kind,
            "players": len(members),
            "base_return": round(base, 4),
            "adapted_return": round(adapted, 4),
            "oracle_return": round(oracle, 4),
            "gain": None if gain_curve is None else round(float(gain_curve[-1]), 4),
            "kl_to_base": round(float(np.mean([t.kl_to_base for t in members])), 4),
            # mean return the players actually experienced, over every episode, minus the base's
            "play_return_vs_base": round(float(np.mean([t.returns for t in members])) - base_returns[first.persona], 4),
            "curve": np.mean([t.expected for t in members], axis=0).round(4).tolist(),
            "gain_curve": None if gain_curve is None else gain_curve.round(4).tolist(),
            "realised": np.mean([t.returns for t in members], axis=0).round(4).tolist(),
        }
        if first.switch_to is not None:
            assert first.switch_at is not None  # make_tracks sets both
            entry["switch_at"] = first.switch_at
            entry["recovery_episodes"] = recovery_episodes(entry["gain_curve"], first.switch_at)
        personas[group] = entry

    def mean_gain(kind: str) -> float | None:
        gains = [p["gain"] for p in personas.values() if p["kind"] == kind and p["gain"] is not None]
        return round(float(np.mean(gains)), 4) if gains else None

    return {
        "mean_gain": mean_gain("named"),
        "heldout_gain": mean_gain("heldout"),
        "switch_recovery_episodes": {g: p["recovery_episodes"] for g, p in personas.items() if p["kind"] == "switch"},
        "play_return_vs_base": {g: p["play_return_vs_base"] for g, p in personas.items() if p["kind"] == "control"},
        "personas": personas,
    }


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write report.json and a PNG of expected return per episode per persona."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(report, indent=1))
    personas = report["personas"]
    cols = 4
    rows = -(-len(personas) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, (name, p) in zip(axes.flat, personas.items()):
        x = np.arange(1, len(p["curve"]) + 1)
        ax.plot(x, p["realised"], color="0.8", lw=0.8, label="realised")
        ax.plot(x, p["curve"], color="tab:blue", lw=1.8, label="adapted (expected)")
        ax.axhline(p["base_return"], color="tab:red", ls="--", lw=1, label="base")
        ax.axhline(p["oracle_return"], color="tab:green", ls=":", lw=1.2, label="oracle")
        gain = "n/a" if p["gain"] is None else f"{p['gain']:.2f}"
        ax.set_title(f"{name}  gain {gain}", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(personas) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="lower right")
    fig.suptitle(f"{report['env']} — return per episode, {report['players']} players", fontsize=11)
    fig.supxlabel("episode", fontsize=9)
    fig.tight_layout()
    png_path = out / "returns.png"
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return json_path, png_path


def format_table(report: dict[str, Any]) -> str:
    """Per-persona text table for the terminal."""
    lines = [f"{'persona':<30}{'kind':>8}{'players':>8}{'base':>9}{'adapted':>9}{'oracle':>9}{'gain':>7}{'KL':>7}"]
    for name, p in report["personas"].items():
        gain = "   n/a" if p["gain"] is None else f"{p['gain']:>6.2f}"
        lines.append(
            f"{name:<30}{p['kind']:>8}{p['players']:>8}{p['base_return']:>9.2f}{p['adapted_return']:>9.2f}"
            f"{p['oracle_return']:>9.2f}{gain:>7}{p['kl_to_base']:>7.2f}"
        )
    if report.get("mean_gain") is not None:
        lines.append(f"mean gain over named personas: {report['mean_gain']:.3f}")
    if report.get("heldout_gain") is not None:
        lines.append(f"mean gain over held-out personas (never in the base's population): {report['heldout_gain']:.3f}")
    for group, n in report.get("switch_recovery_episodes", {}).items():
        lines.append(
            f"switch {group}: gain back to 0.8 after "
            + ("never (within the run)" if n is None else f"{n} episodes")
            + " of the new style"
        )
    return "\n".join(lines)
