"""Latent player traits shared across the sims: one person, one trait, a persona in every game.

A reckless player rushes in as a duellist, buys on impulse, ignores the companion's
advice and charges in a skirmish; the table below says which named persona a trait
plays in each env. Envs with nine named personas leave one persona without a trait.
Held-out personas have none (they stay unseen). Used to simulate players who meet
several NPC archetypes, and so to measure warm starts across archetypes.
"""

from __future__ import annotations

TRAITS: dict[str, dict[str, str]] = {
    #            Duel-v0            Merchant-v0         Companion-v0          Skirmish-v0     Haggle-v0
    "reckless": {"npcadapt/Duel-v0": "rusher", "npcadapt/Merchant-v0": "impatient",
                 "npcadapt/Companion-v0": "glass_cannon", "npcadapt/Skirmish-v0": "berserker",
                 "npcadapt/Haggle-v0": "pushover"},
    "cautious": {"npcadapt/Duel-v0": "turtle", "npcadapt/Merchant-v0": "window_shopper",
                 "npcadapt/Companion-v0": "tank", "npcadapt/Skirmish-v0": "turtle",
                 "npcadapt/Haggle-v0": "skeptic"},
    "brute": {"npcadapt/Duel-v0": "brawler", "npcadapt/Merchant-v0": "sellsword",
              "npcadapt/Companion-v0": "lone_wolf", "npcadapt/Skirmish-v0": "brute",
              "npcadapt/Haggle-v0": "no_nonsense"},
    "shrewd": {"npcadapt/Duel-v0": "counter_puncher", "npcadapt/Merchant-v0": "bargain_hunter",
               "npcadapt/Companion-v0": "looter", "npcadapt/Skirmish-v0": "parrier",
               "npcadapt/Haggle-v0": "penny_pincher"},
    "showy": {"npcadapt/Duel-v0": "jumper", "npcadapt/Merchant-v0": "big_spender",
              "npcadapt/Companion-v0": "explorer", "npcadapt/Skirmish-v0": "trickster",
              "npcadapt/Haggle-v0": "storyteller"},
    "sociable": {"npcadapt/Duel-v0": "zoner", "npcadapt/Merchant-v0": "chatterbox",
                 "npcadapt/Companion-v0": "chatty", "npcadapt/Skirmish-v0": "opportunist",
                 "npcadapt/Haggle-v0": "joker"},
    "collector": {"npcadapt/Duel-v0": "low_sweeper", "npcadapt/Merchant-v0": "collector",
                  "npcadapt/Companion-v0": "potion_lover", "npcadapt/Skirmish-v0": "marksman",
                  "npcadapt/Haggle-v0": "collector"},
    "proud": {"npcadapt/Duel-v0": "high_blocker", "npcadapt/Merchant-v0": "knight",
              "npcadapt/Companion-v0": "hates_small_talk", "npcadapt/Skirmish-v0": "flanker",
              "npcadapt/Haggle-v0": "flattery_lover"},
}


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
