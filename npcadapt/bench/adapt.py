"""Benchmark: how well per-player LoRA adapters adapt, against the oracle and full fine-tuning.

Runs the simulation loop twice with identical seeds and episode budgets: once through
the real Service (LoRA adapters, online trainer), once with the same online algorithm
updating a full per-player copy of the actor. Returns are exact expected returns from
the env's situation tables (no sampling noise in the figures).
"""

from __future__ import annotations

import json
import tempfile

import numpy as np

from ..archetypes import BUILTIN_DIR, archetype_for_env, find_archetypes
from ..service import Service
from ..training.full import FullFinetuneHost
from ..training.online import OnlineConfig


def run(env_id: str = "npcadapt/Duel-v0", *, players_per_persona: int = 2, episodes: int = 200, seed: int = 0,
        config: OnlineConfig = OnlineConfig(), archetype_dirs=None, control_players: int = 8,
        full_finetune: bool = True) -> dict:
    """Benchmark one env. Named personas get `players_per_persona` players each; the
    'average' and 'noise' personas get `control_players` each (their figures are
    differences near zero, so they need more players to be trustworthy). Without
    `full_finetune` only the LoRA half runs (about half the time; full-FT fields None)."""
    import gymnasium as gym

    from sim.loop import persona_names, run_simulation  # sim is a sibling package
    from sim.personas import AVERAGE, NOISE

    archetype = archetype_for_env(env_id, find_archetypes(archetype_dirs or [BUILTIN_DIR]))
    players = players_per_persona * len(persona_names(gym.make(env_id)))
    counts = {AVERAGE: control_players, NOISE: control_players}
    with tempfile.TemporaryDirectory(prefix="npcadapt-adapt-") as tmp:
        svc = Service(tmp, archetype_dirs=archetype_dirs, record=False, online=config, seed=seed)
        lora = run_simulation(svc, env_id, archetype, players=players, episodes=episodes, seed=seed,
                              persona_counts=counts)
        rt = svc.engine.runtime(archetype)
        adapter_params = rt.layout.size
        network_params = sum(p.numel() for p in rt.archetype.policy.parameters())
        svc.close()
    full = None
    if full_finetune:
        full_host = FullFinetuneHost(rt.archetype.policy, archetype, config, seed=seed)
        full = run_simulation(full_host, env_id, archetype, players=players, episodes=episodes, seed=seed,
                              persona_counts=counts)
    personas = {}
    for name, p in lora["personas"].items():
        f = full["personas"][name] if full else None
        gap = p["oracle_return"] - p["base_return"]
        personas[name] = {
            "base_return": p["base_return"],
            "adapted_return": p["adapted_return"],
            "oracle_return": p["oracle_return"],
            "full_ft_return": f["adapted_return"] if f else None,
            "gain": p["gain"],
            "full_ft_gain": round((f["adapted_return"] - p["base_return"]) / gap, 4) if f and abs(gap) > 1e-6 else None,
            "kl_to_base": p["kl_to_base"],
        }
    named = [n for n in personas if n not in (AVERAGE, NOISE)]
    mean_gain = float(np.mean([personas[n]["gain"] for n in named]))
    mean_full = float(np.mean([personas[n]["full_ft_gain"] for n in named])) if full else None
    avg = personas.get(AVERAGE)
    return {
        "benchmark": "adapt",
        "env": env_id,
        "archetype": archetype,
        "episodes_per_player": episodes,
        "players": lora["players"],
        "mean_gain": round(mean_gain, 4),
        "full_ft_mean_gain": round(mean_full, 4) if full else None,
        "lora_vs_full": round(mean_gain / mean_full, 4) if mean_full else None,
        "adapter_param_fraction": round(adapter_params / network_params, 4),
        "average_vs_base": round(avg["adapted_return"] - avg["base_return"], 4) if avg else None,
        "average_tolerance": round(0.02 * abs(avg["oracle_return"] - avg["base_return"]), 4) if avg else None,
        "noise_kl": personas.get(NOISE, {}).get("kl_to_base"),
        "kl_bound": config.kl_bound,
        "seconds": round(lora["seconds"] + (full["seconds"] if full else 0.0), 1),
        "config": config.to_dict(),
        "personas": personas,
    }


if __name__ == "__main__":
    print(json.dumps(run()))
