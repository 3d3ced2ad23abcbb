"""The one exception the sim envs raise on purpose."""

from __future__ import annotations


class SimError(ValueError):
    """An env was given something it cannot take: an unknown persona or render mode, a bad
    episode length, an action outside the action space, a step after the episode ended,
    or action probabilities of the wrong shape."""
