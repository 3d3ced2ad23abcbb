"""The validation gate's statistics: what the trust test predicts through, its t-statistic
of per-episode log Bayes factors, and the thresholds that turn t into the share of a
player's tilt served (:class:`~npcadapt.prior.trainer.PriorTrainer` runs the gate)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidInputError
from ..training.online import OnlineConfig
from .library import Library


def trust_thresholds(library: Library, config: OnlineConfig) -> tuple[float, float]:
    """The trust test's t (open, full): the library's, where OnlineConfig does not override them.
    InvalidInputError where the pair leaves full at or below open (one set by the config, the
    other by the library: only checkable here; the Service checks it when it finds the library)."""
    t_open = library.trust_t_open if config.prior_t_open is None else config.prior_t_open
    t_full = library.trust_t_full if config.prior_t_full is None else config.prior_t_full
    if not t_full > t_open:
        raise InvalidInputError(
            f"the trust test's t thresholds: full {t_full} must be > open {t_open} "
            f"(OnlineConfig prior_t_open / prior_t_full, or the {library.archetype} library's)"
        )
    return t_open, t_full


def trust_covariances(library: Library, cov: torch.Tensor, null: str) -> torch.Tensor:
    """(K + 1, A, d, d) the cohort covariances the trust test predicts through, from the served
    ones `cov` (K + 1, A, d, d). "measured": each cohort as the recordings measured it, its
    pooled posterior (the served covariance less the library's widening, which is room for a
    new player to differ and not a description of the population) plus the spread of its
    recorded players around it (:attr:`Library.member_spread`, where the file has it), so that
    one new player is predicted as one more member; the broad cohort keeps its width.
    "widened": the served covariances."""
    if null != "measured":
        return cov
    measured = cov[:-1] / library.widening  # (K, A, d, d)
    if library.member_spread is not None:
        measured = measured + library.member_spread
    return torch.cat([measured, cov[-1:]])


def ramp(value: float, low: float, high: float) -> float:
    """0 at `low`, 1 at `high`, linear between."""
    return float(np.clip((value - low) / (high - low), 0.0, 1.0))


def add_trial(trials: tuple[float, float, float], value: float, decay: float) -> tuple[float, float, float]:
    """The t-test's decayed count, sum and sum of squares after one more episode's `value`."""
    count, total, squares = trials
    return (decay * count + 1, decay * total + value, decay * squares + value * value)


def t_stat(trials: tuple[float, float, float], cfg: OnlineConfig) -> float:
    """t-statistic of "the mean log Bayes factor is positive" from the decayed count n, sum and
    sum of squares of the per-episode values: mean sqrt(n) / s, with the spread s^2 shrunk
    towards ``prior_spread_nats``^2 by ``prior_spread_episodes`` pseudo-episodes (0 for n = 0)."""
    n, total, squares = trials
    if n <= 0:
        return 0.0
    mean = total / n
    spread2 = (max(squares - n * mean * mean, 0.0) + cfg.prior_spread_episodes * cfg.prior_spread_nats**2) / (
        n + cfg.prior_spread_episodes
    )
    return float(mean * np.sqrt(n / spread2))


def trials_at(t: float, cfg: OnlineConfig, n: float = 4.0) -> tuple[float, float, float]:
    """`n` identical pseudo-episodes whose t-statistic is `t` (trust kept across a restart)."""
    mean = t * cfg.prior_spread_nats * np.sqrt(cfg.prior_spread_episodes / (n + cfg.prior_spread_episodes) / n)
    return (n, n * mean, n * mean * mean)
