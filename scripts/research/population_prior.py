"""Research prototype (not part of the package): NeuralLinear Thompson sampling with a
population mixture prior learned from the play of named personas, against the plain
NeuralLinear baseline. Usage: python scripts/research/population_prior.py ENV_ID [K]

1. Record population play: 4 players per named persona x 30 episodes, played by the
   NeuralLinear baseline (a stand-in for recorded sessions).
2. Fit each player's Bayesian linear reward model on the base's last hidden features,
   cluster the players into K cohorts (k-means on their predicted Q over the env's
   situations), and pool each cohort's data into a cohort posterior.
3. A new player keeps one personal posterior per cohort (started at the cohort's,
   covariance inflated) and weighs cohorts by the marginal likelihood of their rewards;
   Thompson: sample a cohort, then values. Figures in docs/benchmarks.md.

Options: `--beta B` evaluates the policy softmax(base logits + B * Q) instead of argmax Q,
and `--no-bias` drops the constant feature, so that Q = h . M is exactly a delta of the
last layer's weights (a rank <= A LoRA delta on actor.2): the form a served adapter takes.
"""

import argparse
import time

import numpy as np

from npcadapt.archetypes import BUILTIN_DIR, archetype_for_env, find_archetypes
from npcadapt.bench.baselines import NeuralLinearHost, ThompsonSettings, _ThompsonHost
from npcadapt.envs import make as make_env
from npcadapt.simulation import run_simulation

parser = argparse.ArgumentParser()
parser.add_argument("env_id")
parser.add_argument("k", type=int, nargs="?", default=10)
parser.add_argument("--beta", type=float, default=0.0)
parser.add_argument("--no-bias", action="store_true")
args = parser.parse_args()
env_id, K, BETA = args.env_id, args.k, args.beta
archs = find_archetypes([BUILTIN_DIR])
arch = archetype_for_env(env_id, archs)
policy = archs[arch].policy
env = make_env(env_id).unwrapped
settings = ThompsonSettings(prior_scale=0.05, weight_precision=10.0, noise_std=0.5)
seq = getattr(env, "SEQUENTIAL", False)
gamma = 0.9 if seq else 0.0

# 1. population data: 4 players per named persona, 30 episodes each, played by a NeuralLinear explorer (like recorded play)
host = NeuralLinearHost(
    policy, ThompsonSettings(prior_scale=0.05, weight_precision=10.0, noise_std=0.5, gamma=gamma), seed=123
)
data = {}
orig = host._observe


def rec(player, features, actions, targets):
    d = data.setdefault(player, ([], [], []))
    d[0].extend(features)
    d[1].extend(actions)
    d[2].extend(targets)
    orig(player, features, actions, targets)


host._observe = rec


def strip_bias(h):
    """With --no-bias: a NeuralLinear host on the last hidden layer alone."""
    if args.no_bias:
        h.prior_mean, h.dim = h.prior_mean[:, :-1], h.dim - 1
        h.mean, h.cov = np.empty((0, h.n_actions, h.dim)), np.empty((0, h.n_actions, h.dim, h.dim))
    return h


if args.no_bias:  # features = the last hidden layer only
    _with_bias = NeuralLinearHost._features
    NeuralLinearHost._features = lambda self, obs: _with_bias(self, obs)[:, :-1]
    strip_bias(host)
t = time.time()
run_simulation(host, env_id, arch, players=0, episodes=30, seed=7, persona_counts=dict.fromkeys(env.PERSONAS, 4))
print("population data", len(data), "players", round(time.time() - t, 1), "s")

A, D = host.n_actions, host.dim
lam, s2 = 10.0, 0.25


def ridge(F, a, y):
    W = np.zeros((A, D))
    for k in range(A):
        m = a == k
        X = F[m]
        Y = y[m]
        W[k] = np.linalg.solve(lam * np.eye(D) + X.T @ X / s2, lam * host.prior_mean[k] + X.T @ Y / s2)
    return W


players = sorted(data)
Ws = np.stack([ridge(np.array(data[p][0]), np.array(data[p][1]), np.array(data[p][2])) for p in players])  # (N, A, D)
# 2. k-means on the players' predicted Q over a probe set of observations (function space, not weight space)
probe = np.stack([o for o, _ in env.situations()]).astype(np.float32)
Fp = host._features(probe)
Qs = np.einsum("sd,nad->nsa", Fp, Ws).reshape(len(players), -1)
rng = np.random.default_rng(0)
cent = Qs[rng.choice(len(Qs), K, replace=False)]
for _ in range(50):
    lab = ((Qs[:, None] - cent[None]) ** 2).sum(-1).argmin(1)
    cent = np.stack([Qs[lab == k].mean(0) if (lab == k).any() else cent[k] for k in range(K)])
truth = [p.rsplit("-", 1)[0] for p in players]
for k in range(K):
    print(" cohort", k, sorted(set(t for t, l in zip(truth, lab) if l == k)))
# 3. cohort posteriors (pooled Bayesian linear per action)
mu = np.zeros((K, A, D))
cov = np.zeros((K, A, D, D))
for k in range(K):
    F = np.concatenate([np.array(data[p][0]) for p, l in zip(players, lab) if l == k])
    a = np.concatenate([np.array(data[p][1]) for p, l in zip(players, lab) if l == k])
    y = np.concatenate([np.array(data[p][2]) for p, l in zip(players, lab) if l == k])
    for j in range(A):
        m = a == j
        X = F[m]
        Y = y[m]
        P = lam * np.eye(D) + X.T @ X / s2
        C = np.linalg.inv(P)
        cov[k, j] = C
        mu[k, j] = C @ (lam * host.prior_mean[j] + X.T @ Y / s2)
weights = np.bincount(lab, minlength=K) / len(lab)


class MixturePriorHost(_ThompsonHost):
    def action_probs(self, archetype, players, obs, *, base=False):
        obs = np.asarray(obs, np.float32)
        if base or BETA <= 0:
            return super().action_probs(archetype, players, obs, base=base)
        z = self._base_log_probs(obs) + BETA * self._mean_values(list(players), obs, self._features(obs))
        z = np.exp(z - z.max(-1, keepdims=True))
        return z / z.sum(-1, keepdims=True)

    """Per player: for every cohort k, a personal Bayesian linear posterior started at cohort k's
    posterior (covariance inflated by `inflate`), plus the log marginal likelihood of the player's
    data under it; the posterior over cohorts weighs them. Thompson: sample a cohort, then weights."""

    def __init__(self, inflate=2.0, seed=0):
        super().__init__(policy, settings, seed)
        self.inflate = inflate
        self.state = {}
        self._last = None

    def _features(self, obs):
        if self._last is not None and self._last[0].shape == obs.shape and np.array_equal(self._last[0], obs):
            return self._last[1]
        f = host._features(obs)
        if len(obs) > 256:
            self._last = (obs.copy(), f)
        return f

    def _st(self, p):
        if p not in self.state:
            self.state[p] = [mu.copy(), cov * self.inflate + np.eye(D)[None, None] * 1e-3, np.log(weights + 1e-12)]
        return self.state[p]

    def _sample_values(self, players, obs, features):
        out = np.empty((len(players), A))
        for i, (p, f) in enumerate(zip(players, features)):
            m, c, lw = self._st(p)
            w = np.exp(lw - lw.max())
            w /= w.sum()
            k = self.rng.choice(K, p=w)
            mean = m[k] @ f
            var = np.einsum("d,ade,e->a", f, c[k], f)
            out[i] = mean + np.sqrt(np.maximum(var, 0)) * self.rng.standard_normal(A)
        return out

    def _mean_values(self, players, obs, features):
        names, inv = np.unique(np.asarray(players, dtype=object), return_inverse=True)
        out = np.empty((len(players), A))
        for i, p in enumerate(names):
            m, c, lw = self._st(p)
            w = np.exp(lw - lw.max())
            w /= w.sum()
            M = np.einsum("k,kad->ad", w, m)
            rows = inv == i
            out[rows] = features[rows] @ M.T
        return out

    def _observe(self, player, features, actions, targets):
        m, c, lw = self._st(player)
        for f, a, y in zip(features, actions, targets):
            pred = m[:, a] @ f  # (K,)
            cf = np.einsum("kde,e->kd", c[:, a], f)  # (K, D)
            var = s2 + np.einsum("kd,d->k", cf, f)  # (K,) predictive variance
            lw += -0.5 * np.log(2 * np.pi * var) - 0.5 * (y - pred) ** 2 / var
            gain = cf / var[:, None]
            m[:, a] += gain * (y - pred)[:, None]
            c[:, a] -= np.einsum("kd,ke->kde", gain, cf)


from npcadapt.bench.adapt import gain_at

for name, h in [
    (
        "neural_linear",
        strip_bias(
            NeuralLinearHost(
                policy, ThompsonSettings(prior_scale=0.05, weight_precision=10.0, noise_std=0.5, gamma=gamma), seed=0
            )
        ),
    ),
    ("mixture_prior", MixturePriorHost(seed=0)),
]:
    t = time.time()
    r = run_simulation(
        h,
        env_id,
        arch,
        players=2 * (len(env.PERSONAS) + 2),
        episodes=80,
        seed=0,
        persona_counts={"average": 4, "noise": 4},
        heldout_players=2,
        switch_players=0,
    )
    print(
        name,
        "named",
        gain_at(r, "named", [1, 2, 5, 10, 20, 40, 80]),
        "heldout",
        gain_at(r, "heldout", [1, 5, 10, 20, 40, 80]),
        r["play_return_vs_base"],
        round(time.time() - t, 1),
        "s",
    )
