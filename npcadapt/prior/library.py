"""A population prior built from recorded sessions: cohorts of players and their reward models.

Building (:func:`build_library`): every recorded player's decisions become sufficient
statistics of a Bayesian linear reward model on the base's last hidden features
(:mod:`npcadapt.prior.bayes`); players are clustered by what their posterior-mean model
predicts on a shared probe of recorded observations (k-means in function space, so two
players who reward the same actions land together whatever their data); each cohort's
model is the posterior of its pooled statistics, with its covariance inflated so that a
new player can still differ from the cohort. The mixture weights are the cohort sizes.
Each cohort also keeps the spread of its players' own models around its model
(``member_spread``): how far one more member is expected to sit from it, which the trust
test predicts a new player through (:func:`~npcadapt.prior.trust.trust_covariances`).

The models work on a projection of the hidden features to `features` dimensions (the top
right singular vectors of the recorded activations, uncentred so that their mean
direction, which acts as a bias, is kept): Q(x, a) = (basis h(x)) . m_a, still linear in
h, so a served delta is m @ basis on the last layer. A player's statistics are then
A * (d * d + d + 2) numbers (2,192 for 8 actions and d = 16) instead of 33,000 at d = 64.

Serving turns a model into the policy softmax(base logits + beta Q); beta is stored with
the library as `sharpness` over the spread (std) of the recorded targets, so one
setting fits every reward scale.

Stored (:func:`~.library_file.save_library` / :func:`~.library_file.load_library`) as safetensors beside the archetype,
bound to the base hash: a library built on other base weights is refused like a stale
adapter, and a damaged file is refused with the reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple, cast

import numpy as np
import torch

from ..archetypes import Archetype
from ..episodes import Episode
from ..errors import InvalidInputError
from ..numerics import draw_categorical, gae
from .bayes import Stats, cohort_weights, posterior

NOISE_IN_SAMPLE_FACTOR = 1.2  # in-sample residuals understate the noise a new episode has


@dataclass(frozen=True)
class LibraryConfig:
    """Settings of `train library` (saved in the file's metadata)."""

    cohorts: int = 10  # K
    noise_var: float | None = None  # reward noise variance of every model (None: estimated from the recordings)
    weight_precision: float = 100.0  # precision of the broad prior each player's model starts from (strong
    # shrinkage: recorded play rarely tries most actions, and unshrunk models cluster by noise)
    inflate: float = 50.0  # cohort covariance multiplier: room for a player to differ from the cohort
    gamma: float = 0.0  # discount of the reward-to-go target (0: immediate reward; > 0 for sequential games)
    probe: int = 512  # recorded observations the players' models are compared on
    features: int = 16  # d: dimensions of the hidden-feature projection the models work on (<= hidden size)
    sharpness: float = 128.0  # served policy: softmax(base logits + beta Q), beta = sharpness / std(recorded targets)
    min_decisions: int = 12  # players with fewer recorded decisions are left out
    seed: int = 0
    explore_spread: float = 0.0  # served models drawn with this share of the spread a player's data leaves (Library)
    trust_t_open: float = 1.0  # the trust test's t at which the tilt starts to be served (Library) ...
    trust_t_full: float = 4.0  # ... and at which it is served whole

    def __post_init__(self) -> None:
        if self.cohorts < 1 or self.probe < 1 or self.min_decisions < 1 or self.features < 1:
            raise InvalidInputError(f"LibraryConfig: cohorts, probe, features and min_decisions must be >= 1: {self}")
        if not self.sharpness > 0:
            raise InvalidInputError(f"LibraryConfig: sharpness must be > 0: {self}")
        if not (np.isfinite(self.explore_spread) and self.explore_spread >= 0):
            raise InvalidInputError(f"LibraryConfig: explore_spread must be finite and >= 0: {self}")
        if not (
            np.isfinite(self.trust_t_open) and np.isfinite(self.trust_t_full) and self.trust_t_full > self.trust_t_open
        ):
            raise InvalidInputError(f"LibraryConfig: trust_t_full must be finite and > trust_t_open: {self}")
        noise_ok = self.noise_var is None or self.noise_var > 0
        if not (noise_ok and self.weight_precision > 0 and self.inflate >= 1 and 0 <= self.gamma <= 1):
            raise InvalidInputError(
                f"LibraryConfig: noise_var and weight_precision must be > 0, inflate >= 1, gamma in [0, 1]: {self}"
            )


@dataclass(frozen=True)
class Library:
    """K cohort reward models for one archetype's base."""

    archetype: str
    base_hash: str
    basis: torch.Tensor  # (d, H) float64 projection of the base's last hidden features
    mean: torch.Tensor  # (K, A, d) float64
    cov: torch.Tensor  # (K, A, d, d) float64
    log_weights: torch.Tensor  # (K,) log mixture weights
    noise_var: float
    beta: float  # served policy: softmax(base logits + beta Q)
    gamma: float  # discount of the reward-to-go target the models predict
    meta: dict
    transfer: dict[str, torch.Tensor] = field(
        default_factory=dict
    )  # source archetype -> (K_src, K) P(cohort | src cohort)
    transfer_from: dict[str, str] = field(default_factory=dict)  # source archetype -> fingerprint of its library
    # how far a served model is drawn from its cohort posterior's mean, in units of the spread the
    # player's own data leaves (0: the mean; OnlineConfig.prior_explore_spread overrides it). Per
    # archetype, because it was measured to pay in the duel only (docs/adaptation.md)
    explore_spread: float = 0.0
    # (K, A, d, d) how far the recorded players of each cohort sit from its model: the covariance
    # of their own models around it (None: a library written before it was stored)
    member_spread: torch.Tensor | None = None
    # the trust test's t at which the tilt starts to be served and at which it is served whole
    # (OnlineConfig.prior_t_open / prior_t_full override them). Per archetype, because where
    # a player without a style is scored by a noisy game (the haggler) a lower bar serves
    # them a tilt that costs them return (docs/benchmarks.md, session 15)
    trust_t_open: float = 1.0
    trust_t_full: float = 4.0

    @property
    def fingerprint(self) -> str:
        """Identifies these cohorts (a transfer matrix built against other cohorts does not apply)."""
        return hashlib.sha256(self.mean.contiguous().numpy().tobytes()).hexdigest()[:16]

    @property
    def cohorts(self) -> int:
        return int(self.mean.shape[0])

    @property
    def widening(self) -> float:
        """How much the cohorts' covariances were widened over what the recordings measured."""
        return widening_of(self.meta)

    @property
    def population_mean(self) -> torch.Tensor:
        """(A, d) the population's model: the cohort means weighed by cohort size."""
        return torch.einsum("k,kad->ad", self.log_weights.exp(), self.mean)

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """Projected features (T, d) float64 of hidden activations (T, H)."""
        return hidden.to(torch.float64) @ self.basis.T


def widening_of(meta: dict) -> float:
    """The ``LibraryConfig.inflate`` a library's metadata records (1 where it does not say)."""
    return float(meta.get("config", {}).get("inflate", 1.0))


class Decisions(NamedTuple):
    """One player's recorded decisions, flattened over episodes."""

    obs: torch.Tensor  # (T, D) float32
    hidden: torch.Tensor  # (T, H) the base actor's last hidden activations
    actions: torch.Tensor  # (T,) int64
    targets: torch.Tensor  # (T,) float64 reward-to-go


def decisions(policy, episodes: Sequence[Episode], gamma: float) -> Decisions:
    """The decisions of `episodes` with their hidden features and reward-to-go targets."""
    obs = torch.as_tensor(np.stack([o for ep in episodes for o in ep.obs]), dtype=torch.float32)  # (T, D)
    actions = torch.as_tensor([a for ep in episodes for a in ep.action], dtype=torch.int64)  # (T,)
    y = torch.as_tensor(np.concatenate([gae(ep.reward, None, gamma, 1.0) for ep in episodes]))  # (T,) reward-to-go
    device = next(policy.parameters()).device
    with torch.inference_mode():
        hidden = policy.actor_features(obs.to(device)).cpu()  # (T, H)
    return Decisions(obs, hidden, actions, y)


def feature_basis(hidden: torch.Tensor, d: int) -> torch.Tensor:
    """(d, H) top right singular vectors of uncentred activations (N, H)."""
    _, _, vh = torch.linalg.svd(hidden.to(torch.float64), full_matrices=False)
    return vh[: min(d, vh.shape[0])]


def estimate_noise_var(stats: Sequence[Stats], prior_mean: torch.Tensor, prior_cov: torch.Tensor) -> float:
    """The reward noise variance: the mean squared residual of each recorded player's own
    model (fitted with a provisional variance of 0.25) on their own decisions, times
    ``NOISE_IN_SAMPLE_FACTOR`` because a model fitted to the same data looks too good.

    The residuals come from the sufficient statistics alone, per action:
    sum (y - f.m)^2 = yy - 2 m.hy + m' G m.

    The models' evidence (cohort weights, the trust gate) is in nats scaled by 1/variance:
    a fixed guess overstated the noise of games whose players are consistent (their trust
    came slowly) and understated it elsewhere (chance streaks of a random player looked
    like a style). Measured on the shipped recordings: 0.09-0.21 against the old fixed 0.25.
    """
    squared, count = 0.0, 0.0
    for s in stats:
        model = posterior(prior_mean, prior_cov, s, 0.25)[0]  # (A, d)
        fitted = (model.unsqueeze(-2) @ s.gram @ model.unsqueeze(-1)).squeeze(-1).squeeze(-1)  # (A,) m' G m
        squared += float((s.yy - 2 * (model * s.hy).sum(-1) + fitted).sum())
        count += float(s.n.sum())
    return max(NOISE_IN_SAMPLE_FACTOR * squared / max(count, 1.0), 1e-4)


def _kmeans(points: np.ndarray, k: int, seed: int, iters: int = 50) -> np.ndarray:
    """(N,) cluster labels; k-means++ seeding, Lloyd iterations."""
    rng = np.random.default_rng(seed)
    seeds = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        d = np.min([((points - c) ** 2).sum(-1) for c in seeds], axis=0)
        seeds.append(points[draw_categorical(rng, d)] if d.sum() > 0 else points[rng.integers(len(points))])
    centres = np.stack(seeds)
    for _ in range(iters):
        labels = ((points[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        new = np.stack([points[labels == j].mean(0) if (labels == j).any() else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return labels


def build_library(
    archetype: Archetype,
    episodes: Mapping[str, Sequence[Episode]],
    config: LibraryConfig = LibraryConfig(),
    rows_of: Callable[[list[Sequence[Episode]], float], list[Decisions]] | None = None,
) -> tuple[Library, dict[str, int]]:
    """Cohort models from recorded players' episodes; also returns each player's cohort.

    `rows_of(players' episodes, gamma)` computes every player's :class:`Decisions` (the
    costly part: the base's forward over all recorded decisions); default: here, in this
    process (:class:`~npcadapt.training.ray_backend.RayDecisions` spreads it over Ray)."""
    eligible = {p: eps for p, eps in episodes.items() if sum(len(ep) for ep in eps) >= config.min_decisions}
    if len(eligible) < config.cohorts:
        raise InvalidInputError(
            f"train library: {len(eligible)} players with >= {config.min_decisions} recorded "
            f"decisions, fewer than the {config.cohorts} cohorts asked for"
        )
    players = sorted(eligible)
    policy = archetype.policy
    rows = (rows_of or (lambda eps, gamma: [decisions(policy, e, gamma) for e in eps]))(
        [eligible[p] for p in players], config.gamma
    )
    pool_h = torch.cat([r.hidden for r in rows])  # (N_all, H)
    basis = feature_basis(pool_h, config.features)  # (d, H)
    n_actions, d = cast(torch.nn.Linear, policy.actor[-1]).out_features, basis.shape[0]  # a ModuleList of Linears
    stats = [Stats.empty(n_actions, d).add(r.hidden.double() @ basis.T, r.actions, r.targets) for r in rows]
    broad_mean = torch.zeros(n_actions, d, dtype=torch.float64)
    broad_cov = torch.eye(d, dtype=torch.float64).expand(n_actions, d, d) / config.weight_precision
    noise_var = config.noise_var or estimate_noise_var(stats, broad_mean, broad_cov)
    means = torch.stack([posterior(broad_mean, broad_cov, s, noise_var)[0] for s in stats])  # (N, A, d)
    pick = np.random.default_rng(config.seed).choice(len(pool_h), min(config.probe, len(pool_h)), replace=False)
    probe_f = pool_h[torch.as_tensor(pick)].double() @ basis.T  # (S, d)
    predicted = torch.einsum("sd,nad->nsa", probe_f, means).reshape(len(players), -1).numpy()  # (N, S * A)
    labels = np.unique(_kmeans(predicted, config.cohorts, config.seed), return_inverse=True)[1]  # no empty cohort
    cohort_mean, cohort_cov, member_spread, sizes = [], [], [], []
    for k in range(config.cohorts):
        members = [s for s, label in zip(stats, labels) if label == k]
        if not members:
            continue
        pooled = Stats(*(torch.stack(parts).sum(0) for parts in zip(*members)))
        mean, cov = posterior(broad_mean, broad_cov, pooled, noise_var)
        cohort_mean.append(mean)
        cohort_cov.append(cov * config.inflate)
        offsets = means[torch.as_tensor(labels == k)] - mean  # (n_k, A, d) each member's model less the cohort's
        member_spread.append(torch.einsum("nai,naj->aij", offsets, offsets) / len(members))  # (A, d, d)
        sizes.append(len(members))
    sizes_t = torch.tensor(sizes, dtype=torch.float64)
    spread = float(torch.cat([r.targets for r in rows]).std())
    beta = config.sharpness / max(spread, 1e-6)
    meta = {
        "config": config.__dict__,
        "players": len(players),
        "cohort_sizes": sizes,
        "target_std": spread,
        "noise_var": noise_var,
    }
    library = Library(
        archetype.name,
        archetype.base_hash,
        basis,
        torch.stack(cohort_mean),
        torch.stack(cohort_cov),
        torch.log(sizes_t / sizes_t.sum()),
        noise_var,
        beta,
        config.gamma,
        meta,
        explore_spread=config.explore_spread,
        member_spread=torch.stack(member_spread),
        trust_t_open=config.trust_t_open,
        trust_t_full=config.trust_t_full,
    )
    return library, dict(zip(players, (int(x) for x in labels)))


def player_cohort_weights(library: Library, archetype: Archetype, episodes: Sequence[Episode]) -> torch.Tensor:
    """(K,) posterior weight of each cohort of `library` given one player's recorded episodes."""
    rows = decisions(archetype.policy, episodes, library.gamma)
    n_actions, d = library.mean.shape[1:]
    stats = Stats.empty(n_actions, d).add(library.features(rows.hidden), rows.actions, rows.targets)
    return cohort_weights(library.log_weights, library.mean, library.cov, stats, library.noise_var)


def build_transfer(
    library: Library,
    cohort_of: Mapping[str, int],
    source: Library,
    source_archetype: Archetype,
    source_episodes: Mapping[str, Sequence[Episode]],
    smoothing: float = 1.0,
) -> torch.Tensor | None:
    """(K_src, K) P(cohort here | cohort in the source archetype), from the players recorded in both.

    Each shared player adds their source cohort posterior to the row of counts of their cohort
    here; rows are smoothed toward this library's cohort sizes by `smoothing` pseudo-players.
    None when no recorded player played both.
    """
    shared = [p for p in cohort_of if p in source_episodes and len(source_episodes[p])]
    if not shared:
        return None
    counts = torch.zeros(source.cohorts, library.cohorts, dtype=torch.float64)
    for player in shared:
        counts[:, cohort_of[player]] += player_cohort_weights(source, source_archetype, source_episodes[player])
    counts += smoothing * library.log_weights.exp()[None]
    return counts / counts.sum(1, keepdim=True)


def with_transfers(
    library: Library,
    cohort_of: Mapping[str, int],
    sources: Mapping[str, tuple[Library, Archetype]],
    episodes_by_archetype: Mapping[str, Mapping[str, Sequence[Episode]]],
) -> Library:
    """`library` with a transfer matrix from every source archetype whose players it shares."""
    transfer, origin = dict(library.transfer), dict(library.transfer_from)
    for name, (source, source_archetype) in sources.items():
        matrix = build_transfer(library, cohort_of, source, source_archetype, episodes_by_archetype.get(name, {}))
        if matrix is not None:
            transfer[name], origin[name] = matrix, source.fingerprint
    return replace(library, transfer=transfer, transfer_from=origin)
