"""The demo's game rules per archetype: what an NPC observes and what the player's reply earns it.

Observations use exactly the archetypes' (and the sim envs') feature layout: one-hot
features in declared order, then ``round_progress = t / 12``. Rewards come only from what
the player does:

- duelist: the player's move (keys 1-8) against the NPC's move, scored with the sim's
  payoff table ``sim.duel.PAYOFF``;
- merchant: the player's reply to a pitch: buys (the pitch's margin, ``sim.merchant.MARGIN``),
  "no thanks" (browses, 0) or walks off (walks away annoyed, ``sim.merchant.WALK_AWAY``);
- companion: the player's reaction key: thanks (+1), stop that (-1) or none (0).

No pygame here; :mod:`npcadapt.demo.world` applies these rules to the game state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sim import companion as sim_companion
from sim import duel as sim_duel
from sim import merchant as sim_merchant

from ..errors import ArchetypeError

EPISODE_LENGTH = 12  # decisions per bout / visit / outing, as in the sim envs

DUELIST, MERCHANT, COMPANION = "duelist", "merchant", "companion"
SIM_FEATURES = {
    DUELIST: sim_duel.OBSERVATION_FEATURES,
    MERCHANT: sim_merchant.OBSERVATION_FEATURES,
    COMPANION: sim_companion.OBSERVATION_FEATURES,
}
SIM_ACTIONS = {DUELIST: sim_duel.ACTIONS, MERCHANT: sim_merchant.ACTIONS, COMPANION: sim_companion.ACTIONS}
# one-hot sizes of each archetype's situation features (the last feature is round progress)
ONE_HOT_SIZES = {a: tuple(size for _, size in features[:-1]) for a, features in SIM_FEATURES.items()}

# -- duel ---------------------------------------------------------------------------------------
PLAYER_MOVES = sim_duel.PLAYER_MOVES  # keys 1..8 in this order
PAYOFF = sim_duel.PAYOFF  # (npc action, player move) -> reward to the NPC
CLOSE_PX = 80.0  # an NPC nearer than this is "close"
STANCE_SPEED = 30.0  # px/s of approach (aggressive) or retreat (defensive) to count
LOW_STAMINA = 40.0
MOVE_COST = np.array([14, 14, 18, 6, 6, 8, 10, 10], dtype=np.float64)  # stamina per move
DISTANCES = ("close", "far")
STANCES = ("aggressive", "defensive", "neutral")
STAMINA = ("low", "high")

# -- merchant --------------------------------------------------------------------------------------
RESPONSES = sim_merchant.RESPONSES  # walks_away, browses, buys
MARGIN = sim_merchant.MARGIN
WALK_AWAY = sim_merchant.WALK_AWAY
PRICES = np.array([30, 30, 12, 15, 10, 45, 8, 25], dtype=np.int64)  # gold per pitch if bought
PITCH_TEXT = ("Fine blade?", "Sturdy armour?", "Healing potion?", "Lucky charm?",
              "Special price!", "Masterwork piece?", "Lovely weather...", "Fixed price, friend.")
TIMES = ("morning", "evening")
GOLD = ("low", "mid", "high")
GEAR = ("worn", "fresh")
GOLD_MID, GOLD_HIGH = 30, 80
WORN_BELOW = 50.0

# -- companion -------------------------------------------------------------------------------------
REACTIONS = {"thanks": 1.0, "stop": -1.0}
SUPPORT_TEXT = ("Let me heal you.", "Power up!", "I'll scout ahead.", "To arms!",
                "Ooh, loot!", "Right behind you.", "Did you know...", "...")
HEALTH = ("low", "high")
ENEMIES = ("none", "few", "many")
LOCATIONS = ("corridor", "treasure_room")
LOW_HEALTH = 40.0


def check_layout(archetype: str, described: dict) -> None:
    """Raise unless the served archetype has the sim env's observation features and actions."""
    want_obs = [{"name": n, "size": s} for n, s in SIM_FEATURES[archetype]]
    got_obs = [{"name": f["name"], "size": int(f["size"])} for f in described.get("observation", [])]
    if got_obs != want_obs or list(described.get("actions", [])) != list(SIM_ACTIONS[archetype]):
        raise ArchetypeError(
            f"archetype {archetype!r} does not match the demo's rules: expected observation {want_obs} "
            f"and actions {list(SIM_ACTIONS[archetype])}, got {got_obs} and {described.get('actions')}")


def encode(levels: Sequence[int], archetype: str, t: int) -> np.ndarray:
    """One-hot features then progress, laid out as the archetype's sim env: (D,) float32."""
    sizes = ONE_HOT_SIZES[archetype]
    obs = np.zeros(sum(sizes) + 1, np.float32)
    offset = 0
    for level, size in zip(levels, sizes):
        obs[offset + level] = 1.0
        offset += size
    obs[-1] = t / EPISODE_LENGTH
    return obs


def duel_levels(distance_px: float, radial_speed: float, stamina: float) -> tuple[int, int, int]:
    """(distance, stance, stamina) levels; radial_speed > 0 means the player approaches."""
    distance = 0 if distance_px < CLOSE_PX else 1
    stance = 0 if radial_speed > STANCE_SPEED else 1 if radial_speed < -STANCE_SPEED else 2
    return distance, stance, 0 if stamina < LOW_STAMINA else 1


def merchant_levels(evening: bool, gold: int, gear: float) -> tuple[int, int, int]:
    return int(evening), 0 if gold < GOLD_MID else 1 if gold < GOLD_HIGH else 2, 0 if gear < WORN_BELOW else 1


def companion_levels(hp: float, engaged: int, rich_place: bool) -> tuple[int, int, int]:
    return 0 if hp < LOW_HEALTH else 1, 0 if engaged == 0 else 1 if engaged <= 2 else 2, int(rich_place)


def describe_levels(archetype: str, levels: Sequence[int]) -> str:
    """Words for the HUD: 'close, aggressive, stamina high'."""
    a, b, c = levels
    if archetype == DUELIST:
        return f"{DISTANCES[a]}, {STANCES[b]}, stamina {STAMINA[c]}"
    if archetype == MERCHANT:
        return f"{TIMES[a]}, gold {GOLD[b]}, gear {GEAR[c]}"
    return f"health {HEALTH[a]}, enemies {ENEMIES[b]}, {LOCATIONS[c].replace('_', ' ')}"


def duel_reward(npc_action: int, player_move: int) -> float:
    return float(PAYOFF[npc_action, player_move])


def merchant_reward(pitch: int, response: str) -> float:
    """Reward for the pitch given the customer's response (walks_away / browses / buys)."""
    if response == "buys":
        return float(MARGIN[pitch])
    return WALK_AWAY if response == "walks_away" else 0.0


def companion_reward(reaction: str | None) -> float:
    return REACTIONS.get(reaction or "", 0.0)
