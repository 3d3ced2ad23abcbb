"""Benchmark: how fast per-player LoRA adapters adapt, against what a developer would pick instead.

Runs the simulation loop several times with identical players, seeds and episode
budgets: through the real Service (LoRA adapters, online trainer); through per-player
Thompson-sampling baselines (:mod:`npcadapt.bench.baselines`: a (situation, action)
table where the env's situations are discrete, and NeuralLinear on the base's features);
and with the same online algorithm updating a full per-player copy of the actor. Every
figure is an exact expected return from the env's oracle (no sampling noise), turned
into a gain: (policy - base) / (oracle - base), averaged over personas of one kind
(exact on Skirmish's fixed evaluation sample; Haggle's "average" oracle is a lower bound).
``play_return_vs_base`` alone is realised play: what the players actually got.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, TypedDict, cast

import numpy as np

from ..archetypes import BUILTIN_DIR, archetype_for_env, find_archetypes
from ..prior.library import Library
from ..prior.trainer import explore_spread
from ..prior.trust import trust_thresholds
from ..service import Service
from ..training.online import OnlineConfig
from .baselines import NEURAL_LINEAR_SETTINGS, TABLE_SETTINGS, NeuralLinearHost, TableThompsonHost
from .full_finetune import FullFinetuneHost

CHECKPOINTS = (5, 10, 20, 40, 80, 200)
# where a player met NPCs before reaching each env, for the cross-archetype warm start
WARM_SOURCE = {
    "npcadapt/Duel-v0": "npcadapt/Skirmish-v0",
    "npcadapt/Skirmish-v0": "npcadapt/Duel-v0",
    "npcadapt/Merchant-v0": "npcadapt/Haggle-v0",
    "npcadapt/Haggle-v0": "npcadapt/Merchant-v0",
    "npcadapt/Companion-v0": "npcadapt/Duel-v0",
}
WARM_EPISODES = 20  # episodes played with the source archetype first
SEQUENTIAL_GAMMA = 0.9  # the baselines' reward-to-go discount on envs whose actions change the next state


class _SimArgs(TypedDict):
    """The keyword arguments of :func:`~npcadapt.simulation.run_simulation` every run of one benchmark shares."""

    players: int
    episodes: int
    seed: int
    persona_counts: dict[str, int]
    heldout_players: int
    switch_players: int
    switch_at: int | None


def checkpoints(episodes: int) -> list[int]:
    """The standard checkpoints within `episodes`, and `episodes` itself."""
    return sorted({c for c in CHECKPOINTS if c <= episodes} | {episodes})


def gain_at(report: dict, kind: str, marks: list[int]) -> dict[str, float] | None:
    """Mean gain over the personas of `kind` after each of `marks` episodes (None: no such persona)."""
    curves = [p["gain_curve"] for p in report["personas"].values() if p["kind"] == kind and p["gain_curve"]]
    if not curves:
        return None
    mean = np.mean(curves, axis=0)  # (episodes,)
    return {str(k): round(float(mean[k - 1]), 4) for k in marks}


def summarise(report: dict, marks: list[int]) -> dict[str, Any]:
    """The figures reported for npcadapt and for every baseline."""
    return {
        "gain_at": gain_at(report, "named", marks),
        "heldout_gain_at": gain_at(report, "heldout", marks),
        "switch_recovery_episodes": report["switch_recovery_episodes"],
        "play_return_vs_base": report["play_return_vs_base"],
        "mean_gain": report["mean_gain"],
        "seconds": report["seconds"],
    }


def baseline_hosts(env, policy, seed: int) -> dict[str, TableThompsonHost | NeuralLinearHost]:
    """The baselines that apply to `env`, keyed by the name the report uses."""
    gamma = SEQUENTIAL_GAMMA if env.SEQUENTIAL else 0.0
    hosts: dict[str, TableThompsonHost | NeuralLinearHost] = {
        "neural_linear_thompson": NeuralLinearHost(policy, replace(NEURAL_LINEAR_SETTINGS, gamma=gamma), seed)
    }
    if env.DISCRETE_CONTEXT:
        hosts = {"table_thompson": TableThompsonHost(policy, replace(TABLE_SETTINGS, gamma=gamma), seed), **hosts}
    return hosts


def run(
    env_id: str = "npcadapt/Duel-v0",
    *,
    players_per_persona: int = 2,
    episodes: int = 200,
    seed: int = 0,
    config: OnlineConfig = OnlineConfig(),
    archetype_dirs=None,
    control_players: int = 8,
    heldout_players: int = 2,
    switch_players: int = 2,
    switch_at: int | None = None,
    full_finetune: bool = True,
    baselines: bool = True,
    cross_archetype: bool = True,
    out: str | Path | None = "runs/bench",
) -> dict:
    """Benchmark one env; returns the report (one JSON line on the CLI) and writes the plot.

    Named and held-out personas get `players_per_persona` / `heldout_players` players
    each; 'average' and 'noise' get `control_players` each (their figures are differences
    near zero, so they need more players); each switch pair of the env gets
    `switch_players`, switching at `switch_at` (default half way). Without `full_finetune` the full fine-tune run
    is skipped (lora_vs_full None); without `baselines` the baselines are; without
    `cross_archetype` the warm start across archetypes is not measured.
    """
    import gymnasium as gym

    from ..envs import make as make_env
    from ..envs import sim_env
    from ..simulation import run_simulation

    archetypes = find_archetypes(archetype_dirs or [BUILTIN_DIR])
    archetype = archetype_for_env(env_id, archetypes)
    policy = archetypes[archetype].policy
    env = sim_env(make_env(env_id))
    named = len(env.PERSONAS)
    average, noise = env.AVERAGE, env.NOISE  # the env's control personas
    sim_args = _SimArgs(
        players=players_per_persona * named,
        episodes=episodes,
        seed=seed,
        persona_counts={average: control_players, noise: control_players},
        heldout_players=heldout_players,
        switch_players=switch_players,
        switch_at=switch_at,
    )
    with tempfile.TemporaryDirectory(prefix="npcadapt-adapt-") as tmp:
        svc = Service(tmp, archetype_dirs=archetype_dirs, record=False, online=config, seed=seed)
        lora = run_simulation(svc, env_id, archetype, **sim_args)
        rt = svc.engine.runtime(archetype)
        adapter_params = rt.layout.size
        library = svc.libraries.get(archetype)
        prior = None if library is None else prior_settings(library, config)
        svc.close()
        cross = None
        if cross_archetype and env_id in WARM_SOURCE and WARM_SOURCE[env_id] in gym.registry:
            cross = warm_start_gain(env_id, archetypes, Path(tmp) / "cross", config, seed, archetype_dirs)
    network_params = sum(p.numel() for p in policy.parameters())
    marks = checkpoints(episodes)
    others, reports = {}, {"npcadapt (LoRA)": lora}
    if baselines:
        for name, host in baseline_hosts(env, policy, seed).items():
            reports[name] = run_simulation(host, env_id, archetype, **sim_args)
            others[name] = {**summarise(reports[name], marks), "settings": host.settings.to_dict()}
    full = None
    if full_finetune:
        full = run_simulation(FullFinetuneHost(policy, archetype, config, seed=seed), env_id, archetype, **sim_args)
    ours = summarise(lora, marks)
    personas = {}
    for name, p in lora["personas"].items():
        personas[name] = {
            k: p[k]
            for k in (
                "kind",
                "base_return",
                "adapted_return",
                "oracle_return",
                "gain",
                "kl_to_base",
                "play_return_vs_base",
            )
        }
        if full:
            personas[name]["full_ft_return"] = full["personas"][name]["adapted_return"]
            personas[name]["full_ft_gain"] = full["personas"][name]["gain"]
    avg = lora["personas"].get(average)
    result = {
        "benchmark": "adapt",
        "env": env_id,
        "archetype": archetype,
        "episodes_per_player": episodes,
        "players": lora["players"],
        "checkpoints": marks,
        **{k: ours[k] for k in ("gain_at", "heldout_gain_at", "switch_recovery_episodes", "play_return_vs_base")},
        "baselines": others,
        "best_baseline_gain_at": _best(others, marks),
        "mean_gain": lora["mean_gain"],
        "heldout_gain": lora["heldout_gain"],
        "full_ft_mean_gain": full["mean_gain"] if full else None,
        "lora_vs_full": round(lora["mean_gain"] / full["mean_gain"], 4) if full and full["mean_gain"] else None,
        "adapter_param_fraction": round(adapter_params / network_params, 4),
        "average_vs_base": round(avg["adapted_return"] - avg["base_return"], 4) if avg else None,
        "average_tolerance": round(0.02 * abs(avg["oracle_return"] - avg["base_return"]), 4) if avg else None,
        "noise_kl": lora["personas"].get(noise, {}).get("kl_to_base"),
        "kl_bound": config.kl_bound,
        "cross_archetype_gain_at_5": cross["gain_at_5"] if cross else None,
        "cross_archetype": cross,
        "seconds": round(
            lora["seconds"] + sum(b["seconds"] for b in others.values()) + (full["seconds"] if full else 0.0), 1
        ),
        "config": config.to_dict(),
        "prior": prior,
        "personas": personas,
    }
    if out is not None:
        result["plot"] = str(write_plot(env_id, reports, full, Path(out)))
    return result


def prior_settings(library: Library, config: OnlineConfig) -> dict:
    """The population prior's settings a run used: the library's, where `config` does not
    override them (the report's ``config`` shows None for "the library's")."""
    t_open, t_full = trust_thresholds(library, config)
    return {
        "cohorts": library.cohorts,
        "trust_t": [t_open, t_full],
        "trust_null": config.prior_trust_null,
        "member_spread": library.member_spread is not None,
        "widening": library.widening,
        "explore_spread": explore_spread(library, config),
    }


def warm_start_gain(
    env_id: str, archetypes: dict, data: Path, config: OnlineConfig, seed: int, archetype_dirs=None, per_trait: int = 2
) -> dict:
    """Named gain of players who met another archetype first (warm) against fresh players.

    In one Service, `per_trait` players per latent trait (the env's ``TRAITS``) play
    WARM_EPISODES episodes of the source env, then 5 of `env_id` under the same ids; as
    many fresh players of the same personas play 5 episodes of `env_id`. Returns the mean
    gain curves' first 5 points and ``gain_at_5`` = warm minus fresh after 5 episodes."""
    from ..simulation import run_simulation, trait_counts, trait_players

    source = WARM_SOURCE[env_id]
    svc = Service(data, archetype_dirs=archetype_dirs, record=False, online=config, seed=seed)
    try:
        source_arch, arch = archetype_for_env(source, archetypes), archetype_for_env(env_id, archetypes)
        run_simulation(
            svc,
            source,
            source_arch,
            players=0,
            episodes=WARM_EPISODES,
            seed=seed + 1,
            persona_counts=trait_counts(source, per_trait),
            player_ids=trait_players(source, per_trait, "warm"),
        )
        curves = {}
        for kind in ("warm", "fresh"):
            report = run_simulation(
                svc,
                env_id,
                arch,
                players=0,
                episodes=5,
                seed=seed + 2,
                persona_counts=trait_counts(env_id, per_trait),
                player_ids=trait_players(env_id, per_trait, kind),
            )
            curves[kind] = cast(dict[str, float], gain_at(report, "named", [1, 2, 3, 4, 5]))  # named: never None
    finally:
        svc.close()
    return {
        "source": source,
        "source_episodes": WARM_EPISODES,
        "warm_gain_at": curves["warm"],
        "fresh_gain_at": curves["fresh"],
        "gain_at_5": round(curves["warm"]["5"] - curves["fresh"]["5"], 4),
    }


def _best(others: dict, marks: list[int]) -> dict[str, float] | None:
    """Per checkpoint, the best baseline's named gain."""
    if not others:
        return None
    return {str(k): max(b["gain_at"][str(k)] for b in others.values()) for k in marks}


def write_plot(env_id: str, reports: dict[str, dict], full: dict | None, out: Path) -> Path:
    """PNG of mean named (solid) and held-out (dotted) gain vs episodes, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    episodes = next(iter(reports.values()))["episodes_per_player"]
    x = np.arange(1, episodes + 1)
    every = list(range(1, episodes + 1))
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for (label, report), colour in zip(reports.items(), ("tab:blue", "tab:orange", "tab:green", "tab:purple")):
        for kind, style in (("named", "-"), ("heldout", ":")):
            curve = gain_at(report, kind, every)
            if curve:
                ax.plot(
                    x,
                    list(curve.values()),
                    color=colour,
                    lw=1.8 if kind == "named" else 1.2,
                    ls=style,
                    label=f"{label}: {'named' if kind == 'named' else 'held-out'} personas",
                )
    if full is not None:
        ax.plot(
            x,
            list(cast(dict[str, float], gain_at(full, "named", every)).values()),  # named: never None
            color="0.5",
            lw=1.0,
            ls="--",
            label="full fine-tune: named",
        )
    ax.axhline(1.0, color="0.3", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("episodes played by the player")
    ax.set_ylabel("gain: (policy - base) / (oracle - base)")
    ax.set_title(f"{env_id}: adaptation per player")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"adapt-{env_id.split('/')[-1]}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(json.dumps(run()))
