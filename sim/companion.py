"""Companion-v0: an NPC companion that must learn what support *this* player enjoys."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from sim.personas import PersonaRoundEnv, RoundModel, mood_outcomes, product_contexts
from sim.traits import traits_in

# fmt: off
ACTIONS = (
    "heal", "buff", "scout", "fight",
    "gather_loot", "stay_close", "talk", "stay_quiet",
)
OBSERVATION_FEATURES = (
    ("player_health", 2),   # low, high
    ("enemies", 3),         # none, few, many
    ("location", 2),        # corridor, treasure_room
    ("round_progress", 1),  # t / T
)
MOODS = ("sour_mood", "even_mood", "cheerful_mood")  # the mood m = -0.4, 0, +0.4
_A = {name: i for i, name in enumerate(ACTIONS)}

# Hidden tastes: the favourite action per column
# (no enemies: corridor treasure | few: corridor treasure | many: corridor treasure),
# the favourite when the player's health is low, the hated action and how much.
_TASTES = {
    "potion_lover": ("stay_close heal heal stay_close stay_close heal", "heal", "fight", 0.4),
    "lone_wolf": ("scout stay_quiet scout scout stay_quiet buff", "scout", "stay_close", 0.5),
    "explorer": ("scout scout talk gather_loot scout scout", "scout", "stay_quiet", 0.3),
    "glass_cannon": (
        "stay_close buff stay_close stay_close buff buff", "stay_close", "scout", 0.4
    ),
    "chatty": ("talk talk stay_close talk talk buff", "talk", "stay_quiet", 0.5),
    "hates_small_talk": (
        "stay_quiet stay_quiet stay_quiet fight stay_quiet fight", "heal", "talk", 0.5
    ),
    "tank": ("gather_loot scout fight fight fight fight", "fight", "stay_close", 0.3),
    "looter": ("gather_loot " * 6, "gather_loot", "heal", 0.4),
    # held out: never in "average", so neither the base nor population data has seen them
    "medic_fan": ("heal buff heal buff heal buff", "heal", "gather_loot", 0.4),
    "thrill_seeker": ("scout fight fight fight fight gather_loot", "buff", "stay_quiet", 0.4),
}
HELDOUT: tuple[str, ...] = ("medic_fan", "thrill_seeker")
# fmt: on
PERSONAS: tuple[str, ...] = tuple(p for p in _TASTES if p not in HELDOUT)

FAVOURITE_BONUS = 0.8  # satisfaction of the column's favourite at high health (half when hurt)
HURT_BONUS = 0.5  # satisfaction of the low-health favourite
MOOD_JITTER = 0.4  # the realised satisfaction is clip(u + m), m in {-0.4, 0, +0.4}


def _common_sense(contexts: np.ndarray) -> np.ndarray:
    """(C, A) small satisfaction shared by every player: heal when hurt, loot when safe, ..."""
    u = np.zeros((len(contexts), len(ACTIONS)))
    for i, (health, enemies, location) in enumerate(contexts):
        u[i, _A["heal"]] += 0.1 if health == 0 else -0.1
        u[i, _A["fight"]] += (-0.1, 0.0, 0.1)[enemies]
        u[i, _A["gather_loot"]] += 0.1 if (location == 1 and enemies == 0) else -0.05
        u[i, _A["talk"]] += -0.1 if enemies == 2 else 0.0
    return u


def _satisfaction(persona: str, contexts: np.ndarray) -> np.ndarray:
    """(C, A) the persona's mean satisfaction with each action, in [-1, 1]."""
    columns, hurt, hated, hate = _TASTES[persona]
    favourite = [_A[name] for name in columns.split()]
    u = _common_sense(contexts)
    for i, (health, enemies, location) in enumerate(contexts):
        u[i, favourite[enemies * 2 + location]] += FAVOURITE_BONUS if health == 1 else FAVOURITE_BONUS / 2
        if health == 0:
            u[i, _A[hurt]] += HURT_BONUS
        u[i, _A[hated]] -= hate
    return np.clip(u, -1.0, 1.0)


class CompanionEnv(PersonaRoundEnv):
    """NPC companion in a dungeon crawl that must learn which support this player likes.

    ## Description
    An outing is ``episode_length`` moments (default 12). At each moment the companion
    sees the player's health, how many enemies are around and where the party stands;
    these are drawn independently each moment (the companion's choices never change
    them). The companion picks one way to help; the player, a persona with hidden
    tastes, reacts with a satisfaction that is the persona's mean satisfaction with that
    choice in that situation, shifted by the player's passing mood.

    ## Action Space
    ``Discrete(8)``: 0 heal, 1 buff, 2 scout, 3 fight, 4 gather_loot, 5 stay_close,
    6 talk, 7 stay_quiet.

    ## Observation Space
    ``Box(0, 1, (8,), float32)``: one-hot features then progress.

    | Index | Feature        | Values                                  |
    |-------|----------------|-----------------------------------------|
    | 0-1   | player_health  | low (p=.35), high (p=.65)               |
    | 2-4   | enemies        | none (.4), few (.35), many (.25)        |
    | 5-6   | location       | corridor (.6), treasure_room (.4)       |
    | 7     | round_progress | t / T in [0, 1)                         |

    After the last moment the observation is all zeros with progress 1.

    ## Rewards
    The player's satisfaction ``clip(u + m, -1, 1)`` where ``u`` is the persona's mean
    satisfaction (favourite +0.8, or +0.4 plus the low-health favourite's +0.5 when
    hurt; the hated action -0.3..-0.5; a small common-sense term) and the mood ``m``
    is -0.4, 0 or +0.4 with probabilities 1/4, 1/2, 1/4.

    ## Starting State
    Moment 0 with a freshly drawn situation. ``reset(options={"persona": name})``
    switches the persona (it stays switched).

    ## Episode End
    Terminates after ``episode_length`` moments; never truncates.

    ## Personas
    ``info["persona"]`` and ``info["player"]`` name the configured and acting persona
    for logging; a policy never sees ``info``.

    | Persona          | Hidden taste               | Best NPC behaviour                   |
    |------------------|----------------------------|--------------------------------------|
    | potion_lover     | heals; hates NPC fighting  | heal; stay_close in some corridors   |
    | lone_wolf        | space; hates crowding      | scout; stay_quiet; buff vs hordes    |
    | explorer         | the way ahead scouted      | scout; talk / loot near few enemies  |
    | glass_cannon     | a bodyguard; buffs         | stay_close; buff vs many enemies     |
    | chatty           | conversation, even in fights | talk; stay_close / buff in fights  |
    | hates_small_talk | silence; hates talk        | stay_quiet; fight; heal when hurt    |
    | tank             | a second fighter           | fight; gather_loot / scout when clear |
    | looter           | every coin; hates wasted heals | gather_loot                      |
    | medic_fan*       | heals and buffs; hates looting | heal; buff                       |
    | thrill_seeker*   | a fighting partner; hates silence | buff; fight                      |
    | average          | a random named persona per outing | population optimum            |
    | noise            | ignores the NPC's choice   | none (all equal)                     |

    * marks held-out personas: never part of "average" (so the base never trained
    against them), for evaluation only. Switch pairs (a player who changes style once):
    potion_lover -> tank, chatty -> hates_small_talk.

    ## Version History
    * v0: initial version; held-out personas and switch pairs added (their tables are
      new; the named personas, and so every earlier figure, are unchanged).
    """

    ACTIONS: ClassVar[tuple[str, ...]] = ACTIONS
    OBSERVATION_FEATURES: ClassVar[tuple[tuple[str, int], ...]] = OBSERVATION_FEATURES
    PERSONAS: ClassVar[tuple[str, ...]] = PERSONAS
    HELDOUT_PERSONAS: ClassVar[tuple[str, ...]] = HELDOUT
    SWITCHES: ClassVar[tuple[tuple[str, str], ...]] = (("potion_lover", "tank"), ("chatty", "hates_small_talk"))
    TRAITS: ClassVar[dict[str, str]] = traits_in("npcadapt/Companion-v0")

    @classmethod
    def build_model(cls) -> RoundModel:
        contexts, probs = product_contexts([0.35, 0.65], [0.4, 0.35, 0.25], [0.6, 0.4])
        outcome_probs, outcome_values = {}, {}
        for persona in cls.playable():
            p, v = mood_outcomes(_satisfaction(persona, contexts), MOOD_JITTER)  # (C, A, 3)
            outcome_probs[persona], outcome_values[persona] = p, v
        return RoundModel(
            contexts=contexts,
            context_probs=probs,
            outcome_names=MOODS,
            outcome_probs=outcome_probs,
            outcome_values=outcome_values,
        )

    def draw(self, surface: Any, scene: dict[str, Any]) -> None:
        """A dungeon room: player (green), companion (blue), enemies (red), maybe a chest."""
        import pygame

        from sim import render

        health, enemies, location = (int(v) for v in scene["features"])
        floor = (70, 70, 80) if location == 0 else (110, 90, 40)
        pygame.draw.rect(surface, floor, (0, 60, render.WIDTH, 160))
        if location == 1:
            pygame.draw.rect(surface, (230, 190, 50), (400, 150, 50, 34))
            pygame.draw.rect(surface, (120, 80, 20), (400, 150, 50, 34), 3)
        pygame.draw.circle(surface, (80, 200, 100), (120, 150), 20)
        pygame.draw.circle(surface, (70, 130, 240), (80, 175), 15)
        render.bar(surface, (90, 110, 60, 8), 0.25 if health == 0 else 0.9, (80, 200, 100))
        for k in range((0, 2, 5)[enemies]):
            pygame.draw.circle(surface, (220, 60, 60), (260 + 28 * k, 110 + 22 * (k % 2)), 11)
        last = scene["last"]
        if last:
            render.label(surface, f"player in {MOODS[last['outcome']]}", (10, 20), 18)
