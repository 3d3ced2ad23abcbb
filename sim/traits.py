"""Latent player traits shared across the sims: one person, one trait, a persona in every game.

A reckless player rushes in as a duellist, buys on impulse, ignores the companion's
advice and charges in a skirmish; the table below says which named persona a trait
plays in each env. Envs with nine named personas leave one persona without a trait.
Held-out personas have none (they stay unseen). Used to simulate players who meet
several NPC archetypes, and so to measure warm starts across archetypes. Each env class
holds its own column as ``TRAITS`` (trait -> persona), so users of the env need not know
this module.
"""

from __future__ import annotations

ENVS = (
    "npcadapt/Duel-v0",
    "npcadapt/Merchant-v0",
    "npcadapt/Companion-v0",
    "npcadapt/Skirmish-v0",
    "npcadapt/Haggle-v0",
)
TRAITS: dict[str, dict[str, str]] = {
    trait: dict(zip(ENVS, personas))
    for trait, personas in {
        #             Duel-v0            Merchant-v0       Companion-v0        Skirmish-v0    Haggle-v0
        "reckless": ("rusher", "impatient", "glass_cannon", "berserker", "pushover"),
        "cautious": ("turtle", "window_shopper", "tank", "turtle", "skeptic"),
        "brute": ("brawler", "sellsword", "lone_wolf", "brute", "no_nonsense"),
        "shrewd": ("counter_puncher", "bargain_hunter", "looter", "parrier", "penny_pincher"),
        "showy": ("jumper", "big_spender", "explorer", "trickster", "storyteller"),
        "sociable": ("zoner", "chatterbox", "chatty", "opportunist", "joker"),
        "collector": ("low_sweeper", "collector", "potion_lover", "marksman", "collector"),
        "proud": ("high_blocker", "knight", "hates_small_talk", "flanker", "flattery_lover"),
    }.items()
}


def persona_of(trait: str, env_id: str) -> str:
    """The named persona a player with `trait` plays in `env_id`."""
    try:
        return TRAITS[trait][env_id]
    except KeyError:
        raise ValueError(f"no persona for trait {trait!r} in {env_id!r}; traits: {sorted(TRAITS)}") from None


def traits_in(env_id: str) -> dict[str, str]:
    """{trait: the named persona it plays in `env_id`}, in the order of :data:`TRAITS`."""
    return {trait: persona_of(trait, env_id) for trait in TRAITS}
