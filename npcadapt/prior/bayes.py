"""Conjugate Bayesian linear reward models per action, and mixtures of them over cohorts.

A player's reward for action a in observation x is modelled as y = h(x) . w_a + noise,
with h the base actor's last hidden activations (H,), noise variance `noise_var`, and a
Gaussian prior w_a ~ N(m0_a, S0_a). Everything a posterior needs from the player's data
is per action: the Gram matrix G_a = sum h h^T (H, H), b_a = sum y h (H,), sum y^2 and
the count n_a, so a player's state is a few small arrays however long they have played.

A cohort prior is K such Gaussians with mixture weights; a player's posterior weight
of cohort k is its prior weight times the marginal likelihood of the player's rewards
under that cohort (Bayesian policy reuse with a per-cohort reward model). All functions
are pure, batched over leading dimensions, float64.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class Stats(NamedTuple):
    """Sufficient statistics of one player's (h, a, y) data, per action."""

    gram: torch.Tensor  # (..., A, H, H) sum of h h^T
    hy: torch.Tensor  # (..., A, H) sum of y h
    yy: torch.Tensor  # (..., A) sum of y^2
    n: torch.Tensor  # (..., A) count

    @classmethod
    def empty(cls, n_actions: int, hidden: int) -> Stats:
        def z(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.float64)

        return cls(z(n_actions, hidden, hidden), z(n_actions, hidden), z(n_actions), z(n_actions))

    def add(self, h: torch.Tensor, actions: torch.Tensor, y: torch.Tensor) -> Stats:
        """New statistics with rows h (T, H), actions (T,), targets y (T,) added."""
        h, y = h.to(torch.float64), y.to(torch.float64)
        onehot = torch.nn.functional.one_hot(actions, self.n.shape[-1]).to(torch.float64)  # (T, A)
        return Stats(
            self.gram + torch.einsum("ta,th,tg->ahg", onehot, h, h),
            self.hy + torch.einsum("ta,t,th->ah", onehot, y, h),
            self.yy + onehot.T @ (y * y),
            self.n + onehot.sum(0),
        )


class _Posterior(NamedTuple):
    """What one posterior computation gives: mean, precision factor and the natural mean."""

    mean: torch.Tensor  # (..., A, H)
    prec_chol: torch.Tensor  # (..., A, H, H) Cholesky factor of the posterior precision
    eta: torch.Tensor  # (..., A, H) precision @ mean
    prior_prec: torch.Tensor  # (..., A, H, H)
    prior_chol: torch.Tensor  # (..., A, H, H) Cholesky factor of the prior covariance


def _solve(prior_mean: torch.Tensor, prior_cov: torch.Tensor, stats: Stats, noise_var: float) -> _Posterior:
    """The posterior through Cholesky factors (no explicit inverse of the posterior precision)."""
    prior_chol = torch.linalg.cholesky(prior_cov)
    prior_prec = torch.cholesky_inverse(prior_chol)  # (..., A, H, H)
    prec_chol = torch.linalg.cholesky(prior_prec + stats.gram / noise_var)
    eta = (prior_prec @ prior_mean.unsqueeze(-1)).squeeze(-1) + stats.hy / noise_var  # (..., A, H)
    mean = torch.cholesky_solve(eta.unsqueeze(-1), prec_chol).squeeze(-1)
    return _Posterior(mean, prec_chol, eta, prior_prec, prior_chol)


def posterior(
    prior_mean: torch.Tensor, prior_cov: torch.Tensor, stats: Stats, noise_var: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean (..., A, H) and covariance (..., A, H, H) of the weights.

    prior_mean (..., A, H) and prior_cov (..., A, H, H) broadcast against the statistics.
    """
    post = _solve(prior_mean, prior_cov, stats, noise_var)
    return post.mean, torch.cholesky_inverse(post.prec_chol)


def draw_from_data_spread(
    prior_mean: torch.Tensor,
    prior_cov: torch.Tensor,
    stats: Stats,
    noise_var: float,
    scale: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Weights (..., A, H) drawn around the posterior mean m_N with the spread the player's own
    data leaves: N(m_N, scale^2 S_N G S_N / s2), S_N the posterior covariance and G the Gram
    matrix; prior_mean (..., A, H) and prior_cov (..., A, H, H) broadcast against the statistics.

    That is the posterior covariance less the part the prior's own spread contributes. A
    player with few decisions is served close to the prior's model (the recorded population
    has already ruled on it); as their decisions pile up it tends to S_N, so the draw becomes
    Thompson sampling from the player's posterior.
    """
    post = _solve(prior_mean, prior_cov, stats, noise_var)
    eigvals, eigvecs = torch.linalg.eigh(stats.gram)  # (..., A, H), (..., A, H, H): G = U diag(l) U^T
    z = torch.randn(post.mean.shape, generator=generator, dtype=torch.float64)  # (..., A, H)
    scaled = (eigvals.clamp(min=0).sqrt() * z).unsqueeze(-1)  # (..., A, H, 1) ~ N(0, diag(l))
    v = (eigvecs @ scaled) / math.sqrt(noise_var)  # (..., A, H, 1) ~ N(0, G / s2)
    return post.mean + scale * torch.cholesky_solve(v, post.prec_chol).squeeze(-1)  # S_N v ~ N(0, S_N G S_N / s2)


def _logdet(chol: torch.Tensor) -> torch.Tensor:
    """log |M| from the Cholesky factor of M."""
    return 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)


def evidence_and_mean(
    prior_mean: torch.Tensor, prior_cov: torch.Tensor, stats: Stats, noise_var: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(y | h, a) under the prior, summed over actions (...,), and the posterior mean (..., A, H).

    Closed form of the Gaussian marginal likelihood through the statistics:
    -n/2 log(2 pi s2) - 1/2 log|S0| + 1/2 log|S_N| - 1/2 (y.y/s2 + m0' S0^-1 m0 - m_N' S_N^-1 m_N),
    with S_N^-1 m_N = eta and log|S_N| = -log|S_N^-1|, both from one Cholesky factor.
    """
    post = _solve(prior_mean, prior_cov, stats, noise_var)
    quad0 = (prior_mean.unsqueeze(-2) @ post.prior_prec @ prior_mean.unsqueeze(-1)).squeeze(-1).squeeze(-1)  # (..., A)
    quad_n = (post.mean * post.eta).sum(-1)
    per_action = (
        -0.5 * stats.n * math.log(2 * math.pi * noise_var)
        - 0.5 * _logdet(post.prior_chol)
        - 0.5 * _logdet(post.prec_chol)
        - 0.5 * (stats.yy / noise_var + quad0 - quad_n)
    )
    return per_action.sum(-1), post.mean


def log_evidence(prior_mean: torch.Tensor, prior_cov: torch.Tensor, stats: Stats, noise_var: float) -> torch.Tensor:
    """log p(y | h, a) under the prior, summed over actions: (...,) (see :func:`evidence_and_mean`)."""
    return evidence_and_mean(prior_mean, prior_cov, stats, noise_var)[0]


def cohort_weights(
    log_prior_weights: torch.Tensor, prior_mean: torch.Tensor, prior_cov: torch.Tensor, stats: Stats, noise_var: float
) -> torch.Tensor:
    """(K,) posterior probability of each cohort given one player's statistics.

    prior_mean (K, A, H), prior_cov (K, A, H, H); the statistics broadcast over K.
    """
    return torch.softmax(log_prior_weights + log_evidence(prior_mean, prior_cov, stats, noise_var), dim=-1)
