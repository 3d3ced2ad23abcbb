"""Merchant-v0: a shopkeeper NPC that must learn which pitch works on *this* customer."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from sim.personas import PersonaRoundEnv, RoundModel, product_contexts
from sim.traits import traits_in

# fmt: off
ACTIONS = (
    "offer_weapon", "offer_armor", "offer_potion", "offer_trinket",
    "discount", "upsell_premium", "small_talk", "haggle_firm",
)
OBSERVATION_FEATURES = (
    ("time_of_day", 2),     # morning, evening
    ("player_gold", 3),     # low, mid, high
    ("gear_condition", 2),  # worn, fresh
    ("round_progress", 1),  # t / T
)
RESPONSES = ("walks_away", "browses", "buys")
_A = {name: i for i, name in enumerate(ACTIONS)}

MARGIN = np.array([0.7, 0.7, 0.6, 0.6, 0.45, 1.0, 0.6, 0.8])  # reward of a sale, per pitch
WALK_AWAY = -0.5  # reward when the customer leaves annoyed

# Hidden tastes: the pitch the customer warms to per column
# (gold low: worn fresh | mid: worn fresh | high: worn fresh), the pitch it warms to in
# the evening, the pitch it hates, and how readily it buys at all (engagement).
_TASTES = {
    "bargain_hunter": ("discount offer_potion small_talk discount small_talk discount",
                       "small_talk", "upsell_premium", 1.0),
    "collector": ("small_talk small_talk offer_trinket small_talk offer_trinket offer_trinket",
                  "small_talk", "haggle_firm", 1.0),
    "sellsword": ("haggle_firm offer_weapon offer_weapon haggle_firm offer_weapon offer_weapon",
                  "haggle_firm", "small_talk", 1.0),
    "alchemist": ("offer_trinket offer_trinket offer_potion offer_trinket offer_potion "
                  "offer_potion", "offer_trinket", "offer_weapon", 1.0),
    "impatient": ("offer_weapon haggle_firm haggle_firm haggle_firm haggle_firm haggle_firm",
                  "haggle_firm", "small_talk", 1.0),
    "big_spender": ("offer_weapon upsell_premium offer_armor upsell_premium upsell_premium "
                    "upsell_premium", "upsell_premium", "discount", 1.0),
    "chatterbox": ("offer_trinket small_talk small_talk small_talk small_talk small_talk",
                   "small_talk", "haggle_firm", 1.0),
    "knight": ("offer_armor upsell_premium upsell_premium offer_armor offer_armor offer_armor",
               "offer_armor", "offer_trinket", 1.0),
    "window_shopper": ("discount offer_trinket discount offer_trinket discount offer_trinket",
                       "offer_trinket", "upsell_premium", 0.6),
    # held out: never in "average", so neither the base nor population data has seen them
    "tinkerer": ("offer_potion offer_trinket offer_potion offer_armor offer_trinket offer_armor",
                 "offer_potion", "discount", 1.0),
    "noble": ("small_talk upsell_premium offer_armor upsell_premium upsell_premium offer_trinket",
              "small_talk", "haggle_firm", 0.9),
}
HELDOUT: tuple[str, ...] = ("tinkerer", "noble")
# fmt: on
PERSONAS: tuple[str, ...] = tuple(p for p in _TASTES if p not in HELDOUT)


def _liking(persona: str, contexts: np.ndarray) -> np.ndarray:
    """(C, A) how much the customer warms to each pitch, in [-1, 1]."""
    columns, evening, _, _ = _TASTES[persona]
    favourite = [_A[name] for name in columns.split()]
    like = np.zeros((len(contexts), len(ACTIONS)))
    for i, (time, gold, gear) in enumerate(contexts):
        like[i, favourite[gold * 2 + gear]] += 1.0 if time == 0 else 0.5
        if time == 1:
            like[i, _A[evening]] += 0.6
        if gold == 0:  # everyone: premium goods are out of reach, a discount helps a little
            like[i, _A["upsell_premium"]] -= 0.3
            like[i, _A["discount"]] += 0.1
    return np.clip(like, -1.0, 1.0)


def _responses(persona: str, contexts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, A, 3) probabilities and values of walks_away / browses / buys."""
    _, _, hated, engagement = _TASTES[persona]
    like = _liking(persona, contexts)
    hate = np.zeros_like(like)
    hate[:, _A[hated]] = 1.0
    p_buy = engagement * np.clip(0.08 + 0.8 * like, 0.02, 0.95)
    p_walk = (1 - p_buy) * np.clip(0.15 + 0.6 * hate + 0.3 * np.maximum(-like, 0), 0.0, 1.0)
    probs = np.stack([p_walk, 1 - p_buy - p_walk, p_buy], axis=-1)
    values = np.stack(
        [np.full(like.shape, WALK_AWAY), np.zeros(like.shape), np.broadcast_to(MARGIN, like.shape)],
        axis=-1,
    )
    return probs, values


class MerchantEnv(PersonaRoundEnv):
    """Shopkeeper NPC that must learn which pitch makes this customer buy.

    ## Description
    A visit is ``episode_length`` pitches (default 12). Before each pitch the merchant
    sees the time of day, how much gold the customer carries and the state of their
    gear; these are drawn independently each pitch (the merchant's pitches never change
    them). The merchant makes one pitch; the customer, a persona with hidden tastes,
    walks away, browses or buys, with probabilities set by how much it warms to that
    pitch in that situation.

    ## Action Space
    ``Discrete(8)``: 0 offer_weapon, 1 offer_armor, 2 offer_potion, 3 offer_trinket,
    4 discount, 5 upsell_premium, 6 small_talk, 7 haggle_firm.

    ## Observation Space
    ``Box(0, 1, (8,), float32)``: one-hot features then progress.

    | Index | Feature        | Values                               |
    |-------|----------------|--------------------------------------|
    | 0-1   | time_of_day    | morning (p=.55), evening (.45)       |
    | 2-4   | player_gold    | low (.35), mid (.4), high (.25)      |
    | 5-6   | gear_condition | worn (.5), fresh (.5)                |
    | 7     | round_progress | t / T in [0, 1)                      |

    After the last pitch the observation is all zeros with progress 1.

    ## Rewards
    A sale earns the pitch's margin ``MARGIN`` (0.45 for a discount up to 1.0 for a
    premium upsell); browsing earns 0; walking away annoyed costs 0.5. With liking
    ``l`` in [-1, 1], P(buy) = engagement * clip(0.08 + 0.8 l, 0.02, 0.95) and
    P(walk) = (1 - P(buy)) * clip(0.15 + 0.6 [hated] + 0.3 max(-l, 0), 0, 1).

    ## Starting State
    Pitch 0 with a freshly drawn situation. ``reset(options={"persona": name})``
    switches the persona (it stays switched).

    ## Episode End
    Terminates after ``episode_length`` pitches; never truncates.

    ## Personas
    A customer warms fully (l = 1) to its favourite pitch for its gold and gear in the
    morning; in the evening half as much, plus 0.6 for its evening favourite. Low gold
    makes everyone cooler to upsells. ``info["persona"]`` and ``info["player"]`` name the
    configured and acting persona for logging; a policy never sees ``info``.

    | Persona        | Hidden taste                          | Best NPC behaviour            |
    |----------------|---------------------------------------|-------------------------------|
    | bargain_hunter | deals; hates upsells                  | discount; small_talk evenings |
    | collector      | rare trinkets when it has gold, chat  | offer_trinket; small_talk     |
    | sellsword      | weapons, fixed prices; hates chat     | offer_weapon; haggle_firm     |
    | alchemist      | potions when it has gold, else reagents | offer_potion; offer_trinket |
    | impatient      | a fast fixed-price deal               | haggle_firm                   |
    | big_spender    | premium goods; hates discounts        | upsell_premium                |
    | chatterbox     | buys after a chat; hates haggling     | small_talk                    |
    | knight         | armour, sometimes a premium piece     | offer_armor; upsell_premium   |
    | window_shopper | rarely buys: deals or trinkets        | discount; offer_trinket       |
    | tinkerer*      | potions, trinkets, armour; hates discounts | offer_potion; offer_trinket |
    | noble*         | chat, premium goods; hates haggling   | small_talk; upsell_premium    |
    | average        | a random named persona per visit      | population optimum            |
    | noise          | reward ignores the NPC's pitch        | none (all equal)              |

    * marks held-out personas: never part of "average" (so the base never trained
    against them), for evaluation only. Switch pairs (a customer who changes style once):
    bargain_hunter -> big_spender, sellsword -> chatterbox.

    ## Version History
    * v0: initial version; held-out personas and switch pairs added (their tables are
      new; the named personas, and so every earlier figure, are unchanged).
    """

    ACTIONS: ClassVar[tuple[str, ...]] = ACTIONS
    OBSERVATION_FEATURES: ClassVar[tuple[tuple[str, int], ...]] = OBSERVATION_FEATURES
    PERSONAS: ClassVar[tuple[str, ...]] = PERSONAS
    HELDOUT_PERSONAS: ClassVar[tuple[str, ...]] = HELDOUT
    SWITCHES: ClassVar[tuple[tuple[str, str], ...]] = (("bargain_hunter", "big_spender"), ("sellsword", "chatterbox"))
    TRAITS: ClassVar[dict[str, str]] = traits_in("npcadapt/Merchant-v0")
    # the game's tables, for anyone playing by these rules (the demo)
    RESPONSES: ClassVar[tuple[str, ...]] = RESPONSES
    MARGIN: ClassVar[np.ndarray] = MARGIN
    WALK_AWAY: ClassVar[float] = WALK_AWAY

    @classmethod
    def build_model(cls) -> RoundModel:
        contexts, probs = product_contexts([0.55, 0.45], [0.35, 0.4, 0.25], [0.5, 0.5])
        outcome_probs, outcome_values = {}, {}
        for persona in cls.playable():
            outcome_probs[persona], outcome_values[persona] = _responses(persona, contexts)
        return RoundModel(
            contexts=contexts,
            context_probs=probs,
            outcome_names=RESPONSES,
            outcome_probs=outcome_probs,
            outcome_values=outcome_values,
        )

    def draw(self, surface: Any, scene: dict[str, Any]) -> None:
        """A market stall under a morning or evening sky, the customer and its purse."""
        import pygame

        from sim import render

        time, gold, gear = (int(v) for v in scene["features"])
        sky = (120, 180, 230) if time == 0 else (60, 40, 90)
        pygame.draw.rect(surface, sky, (0, 0, render.WIDTH, 200))
        pygame.draw.rect(surface, (150, 100, 60), (40, 120, 160, 80))
        pygame.draw.polygon(surface, (200, 60, 60), [(30, 120), (210, 120), (180, 80), (60, 80)])
        pygame.draw.circle(surface, (240, 200, 150), (120, 100), 14)
        armour = (140, 120, 100) if gear == 0 else (200, 210, 230)
        pygame.draw.rect(surface, armour, (330, 110, 34, 80))
        pygame.draw.circle(surface, (240, 200, 150), (347, 95), 14)
        for k in range((1, 3, 6)[gold]):
            pygame.draw.circle(surface, (240, 200, 40), (390 + 12 * (k % 3), 180 - 12 * (k // 3)), 6)
        last = scene["last"]
        if last:
            render.label(surface, f"customer {RESPONSES[last['outcome']]}", (260, 20), 18)
