"""Simulation envs and player personas; importing this package registers the gymnasium ids.

``npcadapt/Duel-v0``, ``npcadapt/Companion-v0`` and ``npcadapt/Merchant-v0`` are contextual
bandits over a few discrete situations; ``npcadapt/Skirmish-v0`` has continuous
observations; in ``npcadapt/Haggle-v0`` the NPC's lines change the customer's mood, so the
best policy plans ahead. All take the constructor kwargs ``persona``, ``render_mode`` and
``episode_length``, and have named, held-out and switching personas with exact oracles.

A plain gymnasium env package: it imports only gymnasium and numpy (pygame to render).
Users reach the envs by id through ``gymnasium.make``; what they need to know about the
players (``PERSONAS``, ``HELDOUT_PERSONAS``, ``SWITCHES``, ``AVERAGE``, ``NOISE``,
``TRAITS``), the game's tables and the exact oracles are public attributes and methods of
``env.unwrapped``. Bad arguments raise :class:`sim.errors.SimError` (a ``ValueError``).
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from sim.companion import CompanionEnv
from sim.duel import DuelEnv
from sim.errors import SimError
from sim.haggle import HaggleEnv
from sim.merchant import MerchantEnv
from sim.skirmish import SkirmishEnv

ENV_IDS = {
    "npcadapt/Duel-v0": "sim.duel:DuelEnv",
    "npcadapt/Companion-v0": "sim.companion:CompanionEnv",
    "npcadapt/Merchant-v0": "sim.merchant:MerchantEnv",
    "npcadapt/Skirmish-v0": "sim.skirmish:SkirmishEnv",
    "npcadapt/Haggle-v0": "sim.haggle:HaggleEnv",
}

for _env_id, _entry_point in ENV_IDS.items():
    if _env_id not in registry:
        register(id=_env_id, entry_point=_entry_point)

__all__ = ["ENV_IDS", "CompanionEnv", "DuelEnv", "HaggleEnv", "MerchantEnv", "SimError", "SkirmishEnv"]
