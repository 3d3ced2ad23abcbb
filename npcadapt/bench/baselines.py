"""Per-player Thompson-sampling baselines: what a developer would write instead of npcadapt.

Both are :class:`~npcadapt.host.Host` implementations like the Service, so the
adaptation benchmark runs them through the very same simulation loop, seeds and episode
budgets as npcadapt.

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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import cast

import numpy as np
import torch
from torch import nn

from ..errors import InvalidInputError
from ..host import Actions, Host
from ..numerics import gae, masked_log_probs
from ..policy import ActorCritic


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


# The settings each baseline runs with: the best early-episode gains of the sweep recorded in
# docs/benchmarks.md ("Tuning the baselines"), over Duel, Merchant, Companion and Skirmish.
TABLE_SETTINGS = ThompsonSettings(prior_scale=0.05, prior_std=0.5, noise_std=0.3)
NEURAL_LINEAR_SETTINGS = ThompsonSettings(prior_scale=0.05, weight_precision=10.0, noise_std=0.5)


@dataclass
class _Pending:
    """One (player, NPC) episode in progress: its decisions and rewards so far."""

    features: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    rewards: list = field(default_factory=list)


class _ThompsonHost(Host):
    """Shared episode bookkeeping and base-policy helpers; subclasses own the posterior."""

    def __init__(self, policy: ActorCritic, settings: ThompsonSettings = ThompsonSettings(), seed: int = 0):
        self.policy = policy
        self.settings = settings
        self.n_actions = cast(nn.Linear, policy.actor[-1]).out_features  # the actor is a ModuleList of Linears
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
    def act_batch(self, archetype: str, players: Sequence[str], obs, *, npcs: Sequence[str]) -> Actions:
        obs = np.asarray(obs, np.float32)
        features = self.features(obs)
        values = self.sample_values(list(players), obs, features)  # (N, A)
        actions = values.argmax(-1)
        for player, npc, f, a in zip(players, npcs, features, actions):
            episode = self.pending[(player, npc)]
            episode.features.append(f)
            episode.actions.append(int(a))
        return Actions(actions)

    def feedback_batch(self, players: Sequence[str], npcs: Sequence[str], rewards, dones) -> None:
        for player, npc, reward, done in zip(players, npcs, rewards, dones):
            episode = self.pending[(player, npc)]
            episode.rewards.append(float(reward))
            if done or self.settings.gamma == 0:
                targets = gae(episode.rewards, None, self.settings.gamma, 1.0)  # the discounted reward-to-go
                self.observe(player, episode.features, episode.actions, targets)
                del self.pending[(player, npc)]

    def train_pending(self) -> int:
        return 0  # posteriors are updated as feedback arrives

    def action_probs(self, archetype: str, players: Sequence[str], obs, *, base: bool = False) -> np.ndarray:
        obs = np.asarray(obs, np.float32)
        if base:
            return np.exp(self._base_log_probs(obs))
        means = self.mean_values(list(players), obs, self.features(obs))  # (N, A)
        return np.eye(self.n_actions)[means.argmax(-1)]

    # ---- what a subclass provides ----------------------------------------------------------
    def features(self, obs: np.ndarray) -> list[int] | np.ndarray:
        """What the posterior is over for each observation (N, D): a situation id or a feature row."""
        raise NotImplementedError

    def sample_values(self, players: list[str], obs: np.ndarray, features: list[int] | np.ndarray) -> np.ndarray:
        """(N, A) one posterior draw of each action's value for each player's decision."""
        raise NotImplementedError

    def mean_values(self, players: list[str], obs: np.ndarray, features: list[int] | np.ndarray) -> np.ndarray:
        """(N, A) the posterior mean of each action's value for each player's decision."""
        raise NotImplementedError

    def observe(self, player: str, features: list, actions: list[int], targets: np.ndarray) -> None:
        """Update the player's posterior with the decisions' features, actions and regression targets."""
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

    def features(self, obs: np.ndarray) -> list[int]:
        keys = [row[:-1].tobytes() for row in obs]
        new = [i for i, k in enumerate(keys) if k not in self.situations]
        if new:
            prior = self._prior_mean(obs[new])
            for i, p in zip(new, prior):
                if keys[i] not in self.situations:
                    self.situations[keys[i]] = len(self.prior)
                    self.prior.append(p)
        return [self.situations[k] for k in keys]

    def posterior(self, player: str, s: int) -> tuple[np.ndarray, np.ndarray]:
        """(A,) posterior mean and standard deviation of the mean reward in situation s."""
        zero = np.zeros(self.n_actions)
        n, total = self.count[player].get(s, zero), self.total[player].get(s, zero)
        prior_prec, noise_prec = self.settings.prior_std**-2, self.settings.noise_std**-2
        precision = prior_prec + n * noise_prec
        return (prior_prec * self.prior[s] + noise_prec * total) / precision, precision**-0.5

    def sample_values(self, players, obs, features) -> np.ndarray:
        out = np.empty((len(players), self.n_actions))
        for i, (player, s) in enumerate(zip(players, features)):
            mean, std = self.posterior(player, s)
            out[i] = mean + std * self.rng.standard_normal(self.n_actions)
        return out

    def mean_values(self, players, obs, features) -> np.ndarray:
        return np.stack([self.posterior(p, s)[0] for p, s in zip(players, features)])

    def observe(self, player, features, actions, targets) -> None:
        counts, totals = self.count[player], self.total[player]
        for s, a, y in zip(features, actions, targets):
            if s not in counts:
                counts[s], totals[s] = np.zeros(self.n_actions), np.zeros(self.n_actions)
            counts[s][a] += 1
            totals[s][a] += y


class NeuralLinearHost(_ThompsonHost):
    """NeuralLinear Thompson sampling per player on the frozen base's last hidden features.

    Features are phi(x) = [h(x), 1] with h the actor's last hidden activations (D = H + 1).
    Per player and action a Bayesian linear regression of the target on phi: prior
    N(mu0_a, I / weight_precision), where mu0_a is the base's last layer (centred over
    actions) times prior_scale, so phi . mu0_a is the prior mean above; noise variance
    noise_std^2. Each observation is a rank-one (Kalman / recursive least squares) update
    of the mean and covariance. A decision needs only the value of each action at this
    phi, so it samples v_a ~ N(phi . mu_a, phi^T S_a phi): the same distribution as
    sampling w_a and taking phi . w_a.
    """

    def __init__(self, policy: ActorCritic, settings: ThompsonSettings = ThompsonSettings(), seed: int = 0):
        super().__init__(policy, settings, seed)
        last = cast(nn.Linear, policy.actor[-1])  # the actor is a ModuleList of Linears
        w = torch.cat([last.weight, last.bias[:, None]], 1).detach().double().numpy()  # (A, D)
        self.prior_mean = settings.prior_scale * (w - w.mean(0, keepdims=True))  # (A, D)
        self.dim = w.shape[1]
        self.index: dict[str, int] = {}
        self.mean = np.empty((0, self.n_actions, self.dim))  # (players, A, D)
        self.cov = np.empty((0, self.n_actions, self.dim, self.dim))  # (players, A, D, D)
        self._last_obs: np.ndarray | None = None
        self._last_features = np.empty((0, self.dim))

    def features(self, obs: np.ndarray) -> np.ndarray:
        if self._last_obs is not None and self._last_obs.shape == obs.shape and np.array_equal(self._last_obs, obs):
            return self._last_features  # the evaluator asks for the same situations after every episode
        with torch.inference_mode():
            hidden = self.policy.actor_features(torch.as_tensor(obs, dtype=torch.float32))  # (N, H)
        features = np.concatenate([hidden.double().numpy(), np.ones((len(obs), 1))], 1)  # (N, D)
        if len(obs) > 256:
            self._last_obs, self._last_features = obs.copy(), features
        return features

    def _rows(self, players: list[str]) -> np.ndarray:
        """(N,) each player's row in the posterior arrays; a new player starts at the prior."""
        new = [p for p in dict.fromkeys(players) if p not in self.index]
        if new:
            for p in new:
                self.index[p] = len(self.index)
            prior_cov = np.eye(self.dim) / self.settings.weight_precision
            self.mean = np.concatenate(
                [self.mean, np.broadcast_to(self.prior_mean, (len(new), *self.prior_mean.shape))]
            )
            self.cov = np.concatenate(
                [self.cov, np.broadcast_to(prior_cov, (len(new), self.n_actions, *prior_cov.shape))]
            )
        return np.array([self.index[p] for p in players])

    def sample_values(self, players, obs, features) -> np.ndarray:
        rows = self._rows(players)
        mean = np.einsum("nad,nd->na", self.mean[rows], features)  # (N, A)
        var = np.einsum("nd,nade,ne->na", features, self.cov[rows], features)  # (N, A)
        return mean + np.sqrt(np.maximum(var, 0.0)) * self.rng.standard_normal(mean.shape)

    def mean_values(self, players, obs, features) -> np.ndarray:
        rows = self._rows(players)  # first: it may grow self.mean
        return np.einsum("nad,nd->na", self.mean[rows], features)  # (N, A)

    def observe(self, player, features, actions, targets) -> None:
        i = self._rows([player])[0]
        noise_var = self.settings.noise_std**2
        for f, a, y in zip(features, actions, targets):
            mean, cov = self.mean[i, a], self.cov[i, a]  # (D,), (D, D) views
            cov_f = cov @ f  # (D,)
            gain = cov_f / (noise_var + f @ cov_f)  # (D,)
            mean += gain * (y - f @ mean)
            cov -= np.outer(gain, cov_f)
