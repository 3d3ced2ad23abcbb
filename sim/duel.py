"""Duel-v0: an NPC sparring partner against a simulated player with hidden fighting habits."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from sim.personas import PersonaRoundEnv, RoundModel, product_contexts
from sim.traits import traits_in

# fmt: off
ACTIONS = (
    "attack_high", "attack_low", "thrust", "block_high",
    "block_low", "dodge", "feint", "wait",
)
OBSERVATION_FEATURES = (
    ("distance", 2),        # close, far
    ("player_stance", 3),   # aggressive, defensive, neutral
    ("player_stamina", 2),  # low, high
    ("round_progress", 1),  # t / T
)
PLAYER_MOVES = (
    "high_strike", "low_sweep", "rush", "block_high",
    "block_low", "backstep", "jump", "counter",
)
_CODE = {"HS": 0, "LS": 1, "RU": 2, "BH": 3, "BL": 4, "BS": 5, "JU": 6, "CO": 7}

# Payoff to the NPC of (NPC action row) against (player move column).
#                    HS    LS    RU    BH    BL    BS    JU    CO
PAYOFF = np.array([
    [+0.0, -0.4, +0.3, -0.6, +1.0, -0.2, +0.4, -0.8],  # attack_high
    [-0.4, +0.0, +0.3, +1.0, -0.6, -0.2, -0.6, -0.6],  # attack_low
    [+0.3, +0.3, -0.8, -0.4, -0.4, +1.0, -0.4, -0.6],  # thrust
    [+1.0, -0.8, +0.0, -0.1, -0.1, -0.2, +0.4, +0.0],  # block_high
    [-0.8, +1.0, +0.0, -0.1, -0.1, -0.2, -0.4, +0.0],  # block_low
    [+0.3, +0.3, +1.0, -0.3, -0.3, -0.4, -0.2, -0.1],  # dodge
    [-0.6, -0.6, -0.4, +0.4, +0.4, -0.1, -0.4, +1.0],  # feint
    [-0.6, -0.6, -0.6, +0.0, +0.0, +0.2, +1.0, +0.2],  # wait
])

# Hidden habits: the move each persona favours per column
# (close: aggressive defensive neutral | far: aggressive defensive neutral), then the
# move it falls back on when its stamina is low.
_HABITS = {
    "brawler":         ("HS HS HS LS LS HS", "HS"),
    "high_blocker":    ("BH HS BH BH BH BH", "BH"),
    "low_sweeper":     ("LS LS LS BL BL LS", "LS"),
    "rusher":          ("LS LS RU RU HS RU", "LS"),
    "counter_puncher": ("CO BH CO BH CO BS", "BS"),
    "turtle":          ("BL BL BS BL BL BS", "BL"),
    "jumper":          ("JU HS JU HS JU JU", "JU"),
    "zoner":           ("CO BL BS BS BS CO", "CO"),
    # held out: never in "average", so neither the base nor population data has seen them
    "sweep_and_hop":   ("LS JU LS JU BS LS", "BS"),
    "guard_breaker":   ("BL CO BH CO BL RU", "CO"),
}
HELDOUT: tuple[str, ...] = ("sweep_and_hop", "guard_breaker")
# fmt: on
PERSONAS: tuple[str, ...] = tuple(p for p in _HABITS if p not in HELDOUT)

HABIT_WEIGHT = 0.6  # probability of the column's habit move
TIRED_WEIGHT = 0.2  # probability of the fallback move at low stamina (else of the habit)
_STANCE_COLOURS = ((220, 70, 60), (70, 120, 220), (160, 160, 160))


def _move_probs(persona: str, contexts: np.ndarray) -> np.ndarray:
    """(C, M) probability of each player move in each context."""
    columns, tired = _HABITS[persona]
    habit = [_CODE[c] for c in columns.split()]
    probs = np.full((len(contexts), len(PLAYER_MOVES)), (1 - HABIT_WEIGHT - TIRED_WEIGHT) / 8)
    for i, (distance, stance, stamina) in enumerate(contexts):
        move = habit[distance * 3 + stance]
        probs[i, move] += HABIT_WEIGHT
        probs[i, _CODE[tired] if stamina == 0 else move] += TIRED_WEIGHT
    return probs


class DuelEnv(PersonaRoundEnv):
    """NPC sparring partner that must learn how *this* player fights.

    ## Description
    A bout is ``episode_length`` exchanges (default 12). Before each exchange the NPC
    sees the distance, the stance the player shows and the player's stamina; these are
    drawn independently each exchange (they never depend on the NPC's past moves). The
    NPC picks a move; the player, a persona with hidden habits, simultaneously picks a
    move sampled from its habit for that situation; the NPC scores the payoff of its
    move against the player's (table ``PAYOFF``).

    ## Action Space
    ``Discrete(8)``:

    | Num | Action      | Beats best                     |
    |-----|-------------|--------------------------------|
    | 0   | attack_high | block_low, jump                |
    | 1   | attack_low  | block_high                     |
    | 2   | thrust      | backstep                       |
    | 3   | block_high  | high_strike                    |
    | 4   | block_low   | low_sweep                      |
    | 5   | dodge       | rush                           |
    | 6   | feint       | counter, blocks                |
    | 7   | wait        | jump (punish the landing)      |

    ## Observation Space
    ``Box(0, 1, (8,), float32)``: one-hot features then progress.

    | Index | Feature        | Values                          |
    |-------|----------------|---------------------------------|
    | 0-1   | distance       | close (p=.6), far (p=.4)        |
    | 2-4   | player_stance  | aggressive, defensive (.35 each), neutral (.3) |
    | 5-6   | player_stamina | low (p=.4), high (p=.6)         |
    | 7     | round_progress | t / T in [0, 1)                 |

    After the last exchange the observation is all zeros with progress 1.

    ## Rewards
    ``PAYOFF[npc_move, player_move]`` in [-1, 1]. The player's move is sampled, so the
    reward is noisy around its expectation.

    ## Starting State
    Exchange 0 with a freshly drawn situation. ``reset(options={"persona": name})``
    switches the persona (it stays switched).

    ## Episode End
    Terminates after ``episode_length`` exchanges; never truncates.

    ## Personas
    A persona plays its column's habit move with probability 0.6 (close/far x stance),
    its fallback move with 0.2 when its stamina is low (else the habit again), and any
    move with the remaining 0.2. ``info["persona"]`` and ``info["player"]`` name the
    configured and the acting persona for logging; a policy never sees ``info``.

    | Persona         | Hidden habit                         | Best NPC behaviour           |
    |-----------------|--------------------------------------|------------------------------|
    | brawler         | high strikes; low sweeps far and wary | block_high; block_low far   |
    | high_blocker    | blocks high almost always            | attack_low                   |
    | low_sweeper     | sweeps low; blocks low far, cautious | block_low; attack_high far   |
    | rusher          | rushes from range, sweeps low close  | dodge far; block_low close   |
    | counter_puncher | counters, blocks high, backsteps     | feint; attack_low vs blocks  |
    | turtle          | blocks low, backsteps                | attack_high; thrust          |
    | jumper          | jumps in; high strikes if defensive  | wait; block_high             |
    | zoner           | backsteps to keep range, counters    | thrust; feint                |
    | sweep_and_hop*  | sweeps, jumps when defensive         | block_low; wait; thrust      |
    | guard_breaker*  | low blocks, counters, rushes from far | feint; attack_high; dodge   |
    | average         | a random named persona per bout      | population optimum           |
    | noise           | reward ignores the NPC's move        | none (all equal)             |

    * marks held-out personas: never part of "average" (so the base never trained
    against them), for evaluation only. Switch pairs (a player who changes style once):
    brawler -> turtle, high_blocker -> low_sweeper.

    ## Version History
    * v0: initial version; held-out personas and switch pairs added (their tables are
      new; the named personas, and so every earlier figure, are unchanged).
    """

    ACTIONS: ClassVar[tuple[str, ...]] = ACTIONS
    OBSERVATION_FEATURES: ClassVar[tuple[tuple[str, int], ...]] = OBSERVATION_FEATURES
    PERSONAS: ClassVar[tuple[str, ...]] = PERSONAS
    HELDOUT_PERSONAS: ClassVar[tuple[str, ...]] = HELDOUT
    SWITCHES: ClassVar[tuple[tuple[str, str], ...]] = (("brawler", "turtle"), ("high_blocker", "low_sweeper"))
    TRAITS: ClassVar[dict[str, str]] = traits_in("npcadapt/Duel-v0")
    # the game's tables, for anyone playing by these rules (the demo)
    PLAYER_MOVES: ClassVar[tuple[str, ...]] = PLAYER_MOVES
    PAYOFF: ClassVar[np.ndarray] = PAYOFF

    @classmethod
    def build_model(cls) -> RoundModel:
        contexts, probs = product_contexts([0.6, 0.4], [0.35, 0.35, 0.3], [0.4, 0.6])
        values = np.broadcast_to(PAYOFF, (len(contexts), *PAYOFF.shape)).copy()  # (C, A, M)
        outcome_probs, outcome_values = {}, {}
        for persona in cls.playable():
            moves = _move_probs(persona, contexts)  # (C, M)
            outcome_probs[persona] = np.repeat(moves[:, None, :], len(ACTIONS), axis=1)
            outcome_values[persona] = values
        return RoundModel(
            contexts=contexts,
            context_probs=probs,
            outcome_names=PLAYER_MOVES,
            outcome_probs=outcome_probs,
            outcome_values=outcome_values,
        )

    def draw(self, surface: Any, scene: dict[str, Any]) -> None:
        """Two fighters: the NPC (teal, left) and the player (stance colour, right)."""
        import pygame

        from sim import render

        distance, stance, stamina = (int(v) for v in scene["features"])
        ground = 200
        pygame.draw.rect(surface, (60, 50, 40), (0, ground, render.WIDTH, 40))
        npc_x = 150 if distance == 0 else 70
        player_x = 290 if distance == 0 else 370
        pygame.draw.rect(surface, (60, 200, 190), (npc_x, ground - 90, 36, 90))
        pygame.draw.circle(surface, (60, 200, 190), (npc_x + 18, ground - 105), 14)
        colour = _STANCE_COLOURS[stance]
        pygame.draw.rect(surface, colour, (player_x, ground - 90, 36, 90))
        pygame.draw.circle(surface, colour, (player_x + 18, ground - 105), 14)
        render.bar(surface, (player_x - 20, 40, 80, 10), 0.3 if stamina == 0 else 0.9, (240, 200, 60))
        render.label(surface, ("aggressive", "defensive", "neutral")[stance], (player_x - 20, 55), 16)
        last = scene["last"]
        if last:
            render.label(surface, f"player: {PLAYER_MOVES[last['outcome']]}", (player_x - 40, 20), 18)
