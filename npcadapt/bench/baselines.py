"""Per-player Thompson-sampling baselines: what a developer would write instead of npcadapt.

Both are hosts with the Service's simulation surface (``act_batch``, ``feedback_batch``,
``train_pending``, ``action_probs``), so the adaptation benchmark runs them through the
very same simulation loop, seeds and episode budgets as npcadapt.

- :class:`TableThompsonHost`: an independent Gaussian posterior over the mean reward of
  every (situation, action) of every player, where a situation is the observation minus
  its round-progress feature (so only for envs whose situations are discrete).
- :class:`NeuralLinearHost`: NeuralLinear Thompson sampling (Riquelme et al., ICLR 2018):
  a Bayesian linear regression per player and action on the frozen base network's last
  hidden features, so it also works with continuous observations.

Each starts from a weak prior from the base policy: the prior mean reward of action a in
observation x is ``prior_scale * (log pi_base(a|x) - mean_a log pi_base(.|x))``. Each
draws a fresh posterior sample per decision and acts greedily on it; what is *evaluated*
(``action_probs``) is the greedy policy on the posterior mean. The regression target is
the reward, or with ``gamma > 0`` the discounted reward still to come in the episode
(for envs where an action changes what happens next).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..errors import InvalidInputError
from ..policy import ActorCritic, masked_log_probs


@dataclass(frozen=True)
class ThompsonSettings:
    """Settings shared by the two baselines (chosen by the sweep in docs/benchmarks.md)."""

    prior_scale: float = 0.05  # weight of the base policy's centred log-probabilities in the prior mean
    prior_std: float = 0.5  # table: prior standard deviation of each cell's mean reward
    weight_precision: float = 1.0  # neural-linear: prior precision of the regression weights
    noise_std: float = 0.5  # assumed reward noise (scales every posterior's width)
    gamma: float = 0.0  # discount of the reward-to-go target (0: the immediate reward)

    def __post_init__(self) -> None:
        if not (self.prior_std > 0 and self.weight_precision > 0 and self.noise_std > 0 and 0 <= self.gamma <= 1):
            raise InvalidInputError(f"invalid Thompson settings: {self}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Actions:
    action: np.ndarray


@dataclass
class _Pending:
    """One (player, NPC) episode in progress: its decisions and rewards so far."""

    features: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    rewards: list = field(default_factory=list)


def _targets(rewards: list[float], gamma: float) -> np.ndarray:
    """(T,) discounted reward-to-go of each step (the rewards themselves when gamma is 0)."""
    out, running = np.zeros(len(rewards)), 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


class _ThompsonHost:
    """Shared episode bookkeeping and base-policy helpers; subclasses own the posterior."""

    def __init__(self, policy: ActorCritic, settings: ThompsonSettings = ThompsonSettings(), seed: int = 0):
        self.policy = policy
        self.settings = settings
        self.n_actions = policy.actor[-1].out_features
        self.rng = np.random.default_rng(seed)
        self.pending: dict[tuple[str, str], _Pending] = defaultdict(_Pending)

    def _base_log_probs(self, obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return masked_log_probs(self.policy.logits(torch.as_tensor(obs, dtype=torch.float32))).numpy()  # (N, A)

    def _prior_mean(self, obs: np.ndarray) -> np.ndarray:
        """(N, A) the prior's mean reward: the base's centred log-probabilities, scaled."""
        logp = self._base_log_probs(obs)
        return self.settings.prior_scale * (logp - logp.mean(-1, keepdims=True))

    # ---- the host surface ----------------------------------------------------------------
    def act_batch(self, archetype: str, players: Sequence[str], obs, *, npcs: Sequence[str]) -> _Actions:
        obs = np.asarray(obs, np.float32)
        features = self._features(obs)
        values = self._sample_values(list(players), obs, features)  # (N, A)
        actions = values.argmax(-1)
        for player, npc, f, a in zip(players, npcs, features, actions):
            episode = self.pending[(player, npc)]
            episode.features.append(f)
            episode.actions.append(int(a))
        return _Actions(actions)

    def feedback_batch(self, players, npcs, rewards, dones) -> None:
        for player, npc, reward, done in zip(players, npcs, rewards, dones):
            episode = self.pending[(player, npc)]
            episode.rewards.append(float(reward))
            if done or self.settings.gamma == 0:
                self._observe(player, episode.features, episode.actions, _targets(episode.rewards, self.settings.gamma))
                del self.pending[(player, npc)]

    def train_pending(self) -> int:
        return 0  # posteriors are updated as feedback arrives

    def action_probs(self, archetype: str, players: Sequence[str], obs, *, base: bool = False) -> np.ndarray:
        obs = np.asarray(obs, np.float32)
        if base:
            return np.exp(self._base_log_probs(obs))
        means = self._mean_values(list(players), obs, self._features(obs))  # (N, A)
        return np.eye(self.n_actions)[means.argmax(-1)]

    # ---- what a subclass provides ----------------------------------------------------------
    def _features(self, obs: np.ndarray) -> list:
        raise NotImplementedError

    def _sample_values(self, players: list[str], obs: np.ndarray, features: list) -> np.ndarray:
        raise NotImplementedError

    def _mean_values(self, players: list[str], obs: np.ndarray, features: list) -> np.ndarray:
        raise NotImplementedError

    def _observe(self, player: str, features: list, actions: list[int], targets: np.ndarray) -> None:
        raise NotImplementedError


class TableThompsonHost(_ThompsonHost):
    """Gaussian Thompson sampling per player over (situation, action) cells.

    A situation is the observation without its last feature (round progress). Each cell
    holds the conjugate posterior of its mean reward under known noise ``noise_std``:
    prior N(prior mean, prior_std^2), then precision-weighted sums of what was seen.
    """

    def __init__(self, policy: ActorCritic, settings: ThompsonSettings = ThompsonSettings(), seed: int = 0):
        super().__init__(policy, settings, seed)
        self.situations: dict[bytes, int] = {}
        self.prior: list[np.ndarray] = []  # per situation: (A,) prior mean
        self.count: dict[str, dict[int, np.ndarray]] = defaultdict(dict)  # player -> situation -> (A,)
        self.total: dict[str, dict[int, np.ndarray]] = defaultdict(dict)

    def _features(self, obs: np.ndarray) -> list[int]:
        keys = [row[:-1].tobytes() for row in obs]
        new = [i for i, k in enumerate(keys) if k not in self.situations]
        if new:
            prior = self._prior_mean(obs[new])
            for i, p in zip(new, prior):
                if keys[i] not in self.situations:
                    self.situations[keys[i]] = len(self.prior)
                    self.prior.append(p)
        return [self.situations[k] for k in keys]

    def _posterior(self, player: str, s: int) -> tuple[np.ndarray, np.ndarray]:
        """(A,) posterior mean and standard deviation of the mean reward in situation s."""
        zero = np.zeros(self.n_actions)
        n, total = self.count[player].get(s, zero), self.total[player].get(s, zero)
        prior_prec, noise_prec = self.settings.prior_std**-2, self.settings.noise_std**-2
        precision = prior_prec + n * noise_prec
        return (prior_prec * self.prior[s] + noise_prec * total) / precision, precision**-0.5

    def _sample_values(self, players, obs, features) -> np.ndarray:
        out = np.empty((len(players), self.n_actions))
        for i, (player, s) in enumerate(zip(players, features)):
            mean, std = self._posterior(player, s)
            out[i] = mean + std * self.rng.standard_normal(self.n_actions)
        return out

    def _mean_values(self, players, obs, features) -> np.ndarray:
        return np.stack([self._posterior(p, s)[0] for p, s in zip(players, features)])

    def _observe(self, player, features, actions, targets) -> None:
        counts, totals = self.count[player], self.total[player]
        for s, a, y in zip(features, actions, targets):
            if s not in counts:
                counts[s], totals[s] = np.zeros(self.n_actions), np.zeros(self.n_actions)
            counts[s][a] += 1
            totals[s][a] += y


class NeuralLinearHost(_ThompsonHost):
    """NeuralLinear Thompson sampling per player on the frozen base's last hidden features.

    Features are phi(x) = [h(x), 1] with h the actor's last hidden activations (D = H + 1).
    Per player and action: precision L_a = weight_precision I + Phi^T Phi / noise^2 and
    mean mu_a = L_a^-1 (weight_precision mu0_a + Phi^T y / noise^2), where mu0_a is the
    base's last layer (centred over actions) times prior_scale, so phi . mu0_a is the
    prior mean above. A decision samples w_a ~ N(mu_a, L_a^-1) through L_a's Cholesky factor.
    """

    def __init__(self, policy: ActorCritic, settings: ThompsonSettings = ThompsonSettings(), seed: int = 0):
        super().__init__(policy, settings, seed)
        last = policy.actor[-1]
        w = torch.cat([last.weight, last.bias[:, None]], 1).detach().double()  # (A, D)
        self.prior_w = (settings.prior_scale * (w - w.mean(0, keepdim=True))).numpy()  # (A, D)
        self.dim = w.shape[1]
        self.generator = torch.Generator().manual_seed(seed)
        self.stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # player -> (A, D, D) Phi^T Phi, (A, D) Phi^T y
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # player -> (A, D) mean, (A, D, D) Cholesky

    def _features(self, obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            hidden = self.policy.actor_features(torch.as_tensor(obs, dtype=torch.float32))  # (N, H)
        return np.concatenate([hidden.double().numpy(), np.ones((len(obs), 1))], 1)  # (N, D)

    def _posterior(self, player: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, D) posterior mean weights and (A, D, D) Cholesky factor of the precision."""
        if player not in self.cache:
            lam, noise_prec = self.settings.weight_precision, self.settings.noise_std**-2
            gram, xty = self.stats.get(player, (np.zeros((self.n_actions, self.dim, self.dim)),
                                                np.zeros((self.n_actions, self.dim))))
            precision = torch.from_numpy(lam * np.eye(self.dim) + noise_prec * gram)  # (A, D, D)
            eta = torch.from_numpy(lam * self.prior_w + noise_prec * xty)  # (A, D)
            chol = torch.linalg.cholesky(precision)  # (A, D, D) lower
            mean = torch.cholesky_solve(eta.unsqueeze(-1), chol).squeeze(-1)  # (A, D)
            self.cache[player] = (mean, chol)
        return self.cache[player]

    def _stack(self, players: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [self._posterior(p) for p in players]
        return torch.stack([m for m, _ in parts]), torch.stack([c for _, c in parts])  # (N, A, D), (N, A, D, D)

    def _sample_values(self, players, obs, features) -> np.ndarray:
        mean, chol = self._stack(players)
        z = torch.randn(mean.shape + (1,), generator=self.generator, dtype=torch.float64)  # (N, A, D, 1)
        # w = mu + L^-T z has covariance (L L^T)^-1 = precision^-1
        w = mean + torch.linalg.solve_triangular(chol.transpose(-1, -2), z, upper=True).squeeze(-1)
        return torch.einsum("nad,nd->na", w, torch.from_numpy(features)).numpy()  # (N, A)

    def _mean_values(self, players, obs, features) -> np.ndarray:
        names, rows_of = np.unique(np.asarray(players, dtype=object), return_inverse=True)
        means = np.stack([self._posterior(p)[0].numpy() for p in names])  # (U, A, D): evaluation repeats players
        return np.einsum("nad,nd->na", means[rows_of], features)  # (N, A)

    def _observe(self, player, features, actions, targets) -> None:
        gram, xty = self.stats.get(player, (np.zeros((self.n_actions, self.dim, self.dim)),
                                            np.zeros((self.n_actions, self.dim))))
        for f, a, y in zip(features, actions, targets):
            gram[a] += np.outer(f, f)
            xty[a] += y * f
        self.stats[player] = (gram, xty)
        self.cache.pop(player, None)
