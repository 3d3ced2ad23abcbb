"""The simulation loop: many simulated players at once through the npcadapt API.

Each player is a persona in its own env instance. Every step, all active players' NPC
observations go to the host in one ``act_batch``; envs step; rewards and episode ends go
back as ``feedback_batch``; the host's online trainer updates adapters of players with
enough completed episodes. After every episode the exact expected return of each
player's current policy is computed from the env's situation table, so curves are
noise-free measurements, not sampled returns.

A host is anything with the Service's surface: ``act_batch``, ``feedback_batch``,
``train_pending`` and ``action_probs`` (``npcadapt.Service`` or the full fine-tune host).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np

import sim  # noqa: F401  (registers the envs)
from npcadapt.policy import kl_rows
from sim.personas import AVERAGE, NOISE

log = logging.getLogger(__name__)


@dataclass
class PlayerTrack:
    """One simulated player's history."""

    player: str
    persona: str
    returns: list[float] = field(default_factory=list)  # realised return per episode
    expected: list[float] = field(default_factory=list)  # exact expected return after each episode
    kl_to_base: float = 0.0


def persona_names(env: gym.Env) -> tuple[str, ...]:
    """The env's named personas, then 'average' and 'noise'."""
    return (*env.unwrapped.PERSONAS, AVERAGE, NOISE)


def assign_personas(env: gym.Env, players: int, counts: dict[str, int] | None = None) -> list[tuple[str, str]]:
    """(player id, persona) pairs, cycling through :func:`persona_names`.

    `counts` overrides how many players a persona gets (e.g. more 'average' players, whose
    figure is noisier); the others keep the cycling share of `players`.
    """
    personas = persona_names(env)
    pairs = [(f"{personas[i % len(personas)]}-{i // len(personas)}", personas[i % len(personas)]) for i in range(players)]
    if not counts:
        return pairs
    unknown = set(counts) - set(personas)
    if unknown:
        raise ValueError(f"unknown personas in counts: {sorted(unknown)}; env has {list(personas)}")
    kept = [pair for pair in pairs if pair[1] not in counts]
    return kept + [(f"{name}-{j}", name) for name, n in counts.items() for j in range(n)]


class Evaluator:
    """Exact expected return and KL-to-base of many players' current policies."""

    def __init__(self, env: gym.Env):
        self.env = env.unwrapped
        situations = self.env.situations()
        self.obs = np.stack([o for o, _ in situations]).astype(np.float32)  # (S, D)
        self.weights = np.array([w for _, w in situations], dtype=np.float64)  # (S,)

    def _probs(self, host, archetype: str, players: list[str], base: bool) -> np.ndarray:
        n, s = len(players), len(self.obs)
        rows = [p for p in players for _ in range(s)]
        probs = host.action_probs(archetype, rows, np.tile(self.obs, (n, 1)), base=base)
        return probs.reshape(n, s, -1)  # (n, S, A)

    def expected_returns(self, host, archetype: str, tracks: list[PlayerTrack], base: bool = False) -> np.ndarray:
        probs = self._probs(host, archetype, [t.player for t in tracks], base)
        return np.array([self.env.expected_return(t.persona, p) for t, p in zip(tracks, probs)])

    def kl_to_base(self, host, archetype: str, tracks: list[PlayerTrack]) -> np.ndarray:
        """Situation-weighted mean KL(policy || base) per player, nats."""
        players = [t.player for t in tracks]
        p = self._probs(host, archetype, players, False)
        q = self._probs(host, archetype, players, True)
        return (kl_rows(p, q) * self.weights).sum(-1) / self.weights.sum()


def run_simulation(
    host,
    env_id: str,
    archetype: str,
    *,
    players: int = 64,
    episodes: int = 200,
    seed: int = 0,
    train: bool = True,
    on_episode: Callable[[int], None] | None = None,
    persona_counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Play `episodes` episodes for each of `players` simulated players; return the report."""
    start = time.perf_counter()
    probe = gym.make(env_id)
    assignment = assign_personas(probe, players, persona_counts)
    tracks = [PlayerTrack(p, persona) for p, persona in assignment]
    envs = [gym.make(env_id, persona=persona) for _, persona in assignment]
    evaluator = Evaluator(probe)
    base_expected = evaluator.expected_returns(host, archetype, tracks, base=True)
    ids = [t.player for t in tracks]
    decisions = 0
    for episode in range(episodes):
        obs = np.stack([env.reset(seed=seed * 100_003 + i if episode == 0 else None)[0] for i, env in enumerate(envs)])
        active = np.arange(len(envs))
        totals = np.zeros(len(envs))
        while active.size:
            act_ids = [ids[i] for i in active]
            npcs = ["npc"] * len(active)
            out = host.act_batch(archetype, act_ids, obs[active], npcs=npcs)
            decisions += len(active)
            rewards, dones = np.zeros(len(active)), np.zeros(len(active), bool)
            for j, i in enumerate(active):
                next_obs, reward, terminated, truncated, _ = envs[i].step(int(out.action[j]))
                obs[i], rewards[j], dones[j] = next_obs, reward, terminated or truncated
            totals[active] += rewards
            host.feedback_batch(act_ids, npcs, rewards, dones)
            active = active[~dones]
        if train:
            host.train_pending()
        expected = evaluator.expected_returns(host, archetype, tracks)
        for t, total, exp in zip(tracks, totals, expected):
            t.returns.append(float(total))
            t.expected.append(float(exp))
        if on_episode:
            on_episode(episode)
    kls = evaluator.kl_to_base(host, archetype, tracks)
    for t, kl in zip(tracks, kls):
        t.kl_to_base = float(kl)
    seconds = time.perf_counter() - start
    return _report(env_id, archetype, probe, tracks, base_expected, episodes, seed, seconds, decisions)


def _report(env_id, archetype, probe, tracks, base_expected, episodes, seed, seconds, decisions) -> dict[str, Any]:
    env = probe.unwrapped
    personas: dict[str, dict] = {}
    for persona in dict.fromkeys(t.persona for t in tracks):
        idx = [i for i, t in enumerate(tracks) if t.persona == persona]
        base = float(np.mean(base_expected[idx]))
        oracle = float(env.oracle_return(persona))
        adapted = float(np.mean([tracks[i].expected[-1] for i in idx]))
        gap = oracle - base
        personas[persona] = {
            "players": len(idx),
            "base_return": round(base, 4),
            "adapted_return": round(adapted, 4),
            "oracle_return": round(oracle, 4),
            "gain": round((adapted - base) / gap, 4) if abs(gap) > 1e-6 else None,
            "kl_to_base": round(float(np.mean([tracks[i].kl_to_base for i in idx])), 4),
            "curve": np.mean([tracks[i].expected for i in idx], axis=0).round(4).tolist(),
            "realised": np.mean([tracks[i].returns for i in idx], axis=0).round(4).tolist(),
        }
    named = [p for p in personas if p not in (AVERAGE, NOISE) and personas[p]["gain"] is not None]
    return {
        "env": env_id,
        "archetype": archetype,
        "players": len(tracks),
        "episodes_per_player": episodes,
        "seed": seed,
        "mean_gain": round(float(np.mean([personas[p]["gain"] for p in named])), 4) if named else None,
        "personas": personas,
        "seconds": round(seconds, 2),
        "decisions_per_s": round(decisions / seconds),
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
    for ax in list(axes.flat)[len(personas):]:
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
    lines = [f"{'persona':<18}{'players':>8}{'base':>9}{'adapted':>9}{'oracle':>9}{'gain':>7}{'KL':>7}"]
    for name, p in report["personas"].items():
        gain = "   n/a" if p["gain"] is None else f"{p['gain']:>6.2f}"
        lines.append(f"{name:<18}{p['players']:>8}{p['base_return']:>9.2f}{p['adapted_return']:>9.2f}{p['oracle_return']:>9.2f}{gain:>7}{p['kl_to_base']:>7.2f}")
    if report.get("mean_gain") is not None:
        lines.append(f"mean gain over named personas: {report['mean_gain']:.3f}")
    return "\n".join(lines)
