"""Latent player traits shared across the sims: one person, one trait, a persona in every game.

A reckless player rushes in as a duellist, buys on impulse, ignores the companion's
advice and charges in a skirmish; the table below says which named persona a trait
plays in each env. Envs with nine named personas leave one persona without a trait.
Held-out personas have none (they stay unseen). Used to simulate players who meet
several NPC archetypes, and so to measure warm starts across archetypes.
"""

from __future__ import annotations

ENVS = ("npcadapt/Duel-v0", "npcadapt/Merchant-v0", "npcadapt/Companion-v0", "npcadapt/Skirmish-v0", "npcadapt/Haggle-v0")
TRAITS: dict[str, dict[str, str]] = {trait: dict(zip(ENVS, personas)) for trait, personas in {
    #             Duel-v0            Merchant-v0       Companion-v0        Skirmish-v0    Haggle-v0
    "reckless": ("rusher", "impatient", "glass_cannon", "berserker", "pushover"),
    "cautious": ("turtle", "window_shopper", "tank", "turtle", "skeptic"),
    "brute": ("brawler", "sellsword", "lone_wolf", "brute", "no_nonsense"),
    "shrewd": ("counter_puncher", "bargain_hunter", "looter", "parrier", "penny_pincher"),
    "showy": ("jumper", "big_spender", "explorer", "trickster", "storyteller"),
    "sociable": ("zoner", "chatterbox", "chatty", "opportunist", "joker"),
    "collector": ("low_sweeper", "collector", "potion_lover", "marksman", "collector"),
    "proud": ("high_blocker", "knight", "hates_small_talk", "flanker", "flattery_lover"),
}.items()}


def persona_of(trait: str, env_id: str) -> str:
    """The named persona a player with `trait` plays in `env_id`."""
    try:
        return TRAITS[trait][env_id]
    except KeyError:
        raise ValueError(f"no persona for trait {trait!r} in {env_id!r}; traits: {sorted(TRAITS)}") from None


def trait_players(env_id: str, per_trait: int, prefix: str = "player") -> dict[str, str]:
    """{track name in the sim loop: player id} for `per_trait` players per trait: the same
    ids in every env, so one person meets every archetype as the same player."""
    return {f"{persona_of(trait, env_id)}-{j}": f"{prefix}-{trait}-{j}" for trait in TRAITS for j in range(per_trait)}


def trait_counts(env_id: str, per_trait: int) -> dict[str, int]:
    """persona_counts for the sim loop: `per_trait` players of each trait's persona."""
    return {persona_of(trait, env_id): per_trait for trait in TRAITS}
