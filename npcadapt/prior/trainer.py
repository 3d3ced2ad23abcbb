"""Per-player adaptation from the population prior: a Bayesian posterior served as a LoRA row.

Each player keeps the sufficient statistics of their own decisions (:class:`~.bayes.Stats`
on the library's projected features), decayed by ``prior_decay`` after an episode that
the player's history predicted worse than the population did, by more than
``prior_surprise_nats`` (``prior_forget`` "surprise": a steady style keeps all its
evidence; "always": after every episode). After every completed episode:

1. the statistics take the episode's (features, action, reward-to-go) rows;
2. each cohort's weight is its prior weight times the marginal likelihood of the player's
   rewards under it (Bayesian policy reuse), and each cohort's model is updated to a
   personal posterior started from that cohort (so a player unlike every cohort still
   converges to their own model);
3. exploration from uncertainty: the next episodes are served one cohort's personal model,
   drawn with its posterior weight (Thompson sampling over cohorts); where the spread in
   use (``prior_explore_spread``, or the library's ``explore_spread`` when that is None) is
   above 0, the model itself is drawn around that posterior's mean with the spread the
   player's own data leaves (:func:`~.bayes.draw_from_data_spread`); with
   ``prior_explore`` off, the weighted mean of the models;
4. the model Q = f . m becomes the policy softmax(base logits + beta Q), a delta of the
   last layer written exactly as a LoRA row (:func:`~.head.weight_delta_row`), scaled down
   by bisection if its mean KL to the base on the episode's observations exceeds the bound.

Validation gate: the tilt is served in proportion to evidence that this player's history
predicts their play. After each episode with a past, g = the log Bayes factor of "the
player's past episodes (through the cohort posterior) predicted this one" against "the
population alone predicted it" (clipped to +-``prior_episode_nats``), both predicted
through the cohorts as the recordings measured them (``prior_trust_null`` "measured",
:func:`~.trust.trust_covariances`: each cohort's pooled posterior plus the spread of its recorded
players around it; the broad cohort keeps its width): the library widens each cohort's
covariance so that a new player can differ from it, and against that vaguer population a
player whose style changes every episode (the sims' "average") looks like a style of their
own. The served models,
the fading on surprise and the change-point test below keep the widened cohorts. With
``prior_trust_test`` "t" (default) these g form a sequential t-test of "on average,
g > 0": from their decayed count n, mean and spread s (shrunk towards
``prior_spread_nats`` as if ``prior_spread_episodes`` more episodes had it),
t = mean sqrt(n) / s, and the share is t from the library's ``trust_t_open`` to
``trust_t_full`` (``prior_t_open`` / ``prior_t_full`` override them),
within [0, 1]. A small but steady edge (a consistent style) earns trust in a few
episodes; an edge that comes and goes (an average player, whose history sometimes
helps and sometimes misleads) weighs less in t than in a decayed sum of g, so it earns
trust more slowly (docs/adaptation.md gives the measured effect and its limits). With "sum", the share is the decayed sum of g (clipped to
+-``prior_evidence_cap``) from ``prior_trust_open`` to ``prior_trust_nats``. After a
change of style the trust falls and comes back as the new style is learnt.
Change-point test: an episode that the history predicts worse than the population by
more than ``prior_change_nats`` is a suspected change of style. With
``prior_change_confirm`` the next update (episode) confirms it if the suspect episode alone
predicts it better than both the history and the population do (else an odd bout of a
steady player would throw away a sharp history); a change drops the past statistics
(the player starts again from the suspect episode) and any trust earned.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import cast

import numpy as np
import torch

from ..episodes import Episode
from ..lora.bank import AdapterLayout
from ..numerics import draw_categorical_torch, masked_kl_rows, masked_log_probs
from ..policy import ActorCritic
from ..training.online import OnlineConfig, PlayerUpdate, UpdateOutcome
from .bayes import Stats, draw_from_data_spread, evidence_and_mean, log_evidence
from .head import weight_delta_row
from .library import Decisions, Library, decisions
from .trust import add_trial, ramp, t_stat, trials_at, trust_covariances, trust_thresholds


@dataclass(frozen=True)
class PosteriorState:
    """One player's carried state: decayed statistics, episodes seen and the last belief."""

    stats: Stats  # (A, d, d), (A, d), (A,), (A,)
    episodes: int
    weights: torch.Tensor  # (K + 1,) posterior weight of each cohort (the last: the broad one) after the last update
    served_cohort: int  # the cohort whose model is served (-1: the weighted mean)
    evidence: float = 0.0  # the trust statistic: t of the log Bayes factors ("t"), or their decayed sum, nats ("sum")
    share: float = 0.0  # share of the personal tilt served (0: the base)
    changes: int = 0  # changes of style detected
    log_prior: torch.Tensor | None = None  # (K + 1,) this player's prior over cohorts (None: the library's)
    warm_from: tuple[str, ...] = ()  # archetypes whose posterior warm-started this one
    trials: tuple[float, float, float] = (0.0, 0.0, 0.0)  # decayed count, sum and sum of squares of those log BFs
    suspect: Stats | None = None  # an episode that suspected a change, awaiting the next to confirm it

    @property
    def confidence(self) -> float:
        """Posterior weight of the most likely cohort, in [0, 1]."""
        return float(self.weights.max())

    def describe(self) -> dict:
        """Plain data for stats and HUDs: where the player's NPC stands on the prior."""
        return {
            "episodes": self.episodes,
            "cohort": int(self.weights.argmax()),
            "confidence": round(self.confidence, 4),
            "served_cohort": self.served_cohort,
            "decisions": round(float(self.stats.n.sum()), 2),
            "evidence": round(self.evidence, 3),
            "share": round(self.share, 4),
            "changes": self.changes,
            "suspected_change": self.suspect is not None,  # awaiting the next episode to confirm a change
            "warm_from": list(self.warm_from),
        }


class PriorTrainer:
    """The OnlineTrainer interface (``update(items) -> outcomes``) for archetypes with a library."""

    def __init__(
        self, policy: ActorCritic, layout: AdapterLayout, library: Library, config: OnlineConfig = OnlineConfig()
    ):
        self.policy = policy
        self.family = layout
        self.library = library
        self.config = config
        self.last_layer = f"actor.{len(policy.actor) - 1}"
        self.mean, self.cov, self.log_weights = with_new_cohort(library, config.prior_new_cohort)  # K + 1 components
        self.trust_cov = trust_covariances(library, self.cov, config.prior_trust_null)  # (K + 1, A, d, d)
        self.t_open, self.t_full = trust_thresholds(library, config)
        self._empty = Stats.empty(*library.mean.shape[1:])
        self._scalable = layout.scalable_mask()  # (P,) the B entries: non-zero only in an adapted row

    def fresh_state(self) -> PosteriorState:
        """The state of a player with no data: the prior's weights, nothing served yet."""
        return new_player_state(self.library, self.config.prior_new_cohort)

    def _restored_or_fresh(self, params: torch.Tensor | None) -> PosteriorState:
        """A player without trainer state: fresh, or, if they are served an adapted row (a
        restart lost their statistics), fresh statistics that keep full trust, so their NPC
        does not fall back to the base while the posterior is rebuilt."""
        fresh, cfg = self.fresh_state(), self.config
        if params is not None and bool((params[self._scalable] != 0).any()):
            if cfg.prior_trust_test == "sum":
                return replace(fresh, evidence=cfg.prior_trust_nats)
            return replace(fresh, evidence=self.t_full, trials=trials_at(self.t_full, cfg))
        return fresh

    def warm_state(self, sources: dict[str, PosteriorState]) -> PosteriorState | None:
        """The starting state of a player new here whose posteriors in other archetypes are
        known: prior cohort weights sum_src w_src @ P(cohort | src cohort) (averaged over the
        sources this library has a current transfer matrix for; the broad cohort keeps its
        weight), and a share of the trust they earned there. None: nothing applies."""
        lib, cfg = self.library, self.config
        rows, trust, used, trials = [], [], [], []
        for name, state in sources.items():
            matrix = lib.transfer.get(name)
            if matrix is None or state.weights.shape[0] != matrix.shape[0] + 1:
                continue
            src = state.weights[:-1] / state.weights[:-1].sum()  # (K_src,) without the source's broad cohort
            rows.append(src @ matrix)  # (K,)
            trust.append(state.evidence)
            trials.append(state.trials)
            used.append(name)
        if not rows:
            return None
        weights = torch.cat(
            [
                torch.stack(rows).mean(0) * (1 - cfg.prior_new_cohort),
                torch.tensor([cfg.prior_new_cohort], dtype=torch.float64),
            ]
        )  # (K + 1,)
        if cfg.prior_trust_test == "sum":
            evidence, carried = cfg.prior_transfer_trust * max(trust), (0.0, 0.0, 0.0)
        else:  # the most trusted source's log Bayes factors, each weighing prior_transfer_trust of an episode here
            count, total, squares = trials[int(np.argmax(trust))]
            k = cfg.prior_transfer_trust
            carried = (k * count, k * total, k * squares)
            evidence = t_stat(carried, cfg)
        return PosteriorState(self._empty, 0, weights, -1, evidence, 0.0, 0, torch.log(weights), tuple(used), carried)

    def update(self, items: Sequence[PlayerUpdate]) -> list[UpdateOutcome]:
        """One posterior step per player in `items` (their episodes completed since the last)."""
        return [self._update_one(item) for item in items if any(len(ep) for ep in item.episodes)]

    def _update_one(self, item: PlayerUpdate) -> UpdateOutcome:
        lib, cfg = self.library, self.config
        episodes = [ep for ep in item.episodes if len(ep)]
        state = item.state if isinstance(item.state, PosteriorState) else self._restored_or_fresh(item.params)
        log_prior = self.log_weights if state.log_prior is None else state.log_prior  # (K + 1,)
        rows = decisions(self.policy, episodes, lib.gamma)
        features = lib.features(rows.hidden)  # (T, d)
        decay = cfg.prior_decay ** len(episodes)
        on_surprise = cfg.prior_forget == "surprise"  # the past fades only after an episode it predicted badly
        past = _decayed(state.stats, 1.0 if on_surprise else decay)
        stats, fit, means = self._posterior(past, features, rows)  # fit (K + 1,), means (K + 1, A, d)
        alone = self._posterior(self._empty, features, rows)  # these episodes without the past
        # how much better the player's own history predicted these rewards than the population
        # did (log Bayes factor, nats): log p(new | past, cohorts) - log p(new | cohorts)
        predicted = self._predicted(log_prior, past, fit)  # log p(new | past, cohorts)
        population = float(torch.logsumexp(log_prior + alone[1], 0))  # log p(new | cohorts)
        gain = predicted - population
        trust_gain = gain  # the trust test's log Bayes factor: by default through the cohorts as measured
        if cfg.prior_trust_null == "measured":
            trust_gain = self._measured_gain(log_prior, past, stats, alone[0])
        if on_surprise and gain < -cfg.prior_surprise_nats:  # surprised: the past fades as it always would
            stats, fit, means = self._posterior(_decayed(state.stats, decay), features, rows)
        elif on_surprise:
            decay = 1.0  # nothing faded: the trust test's trials keep their weight too
        restart, suspect = self._change_point(
            state, gain < -cfg.prior_change_nats, alone, log_prior, features, rows, predicted, population
        )
        changed = restart is not None
        changes = state.changes + changed
        if restart is not None:  # a change of style: the past misleads, start again from the new style
            stats, fit, means = restart
        step = float(np.clip(trust_gain, -cfg.prior_episode_nats, cfg.prior_episode_nats))
        evidence, trials, share = self._trust(state, step, changed, float(past.n.sum()) > 0, decay)
        weights = torch.softmax(log_prior + fit, dim=-1)  # (K + 1,)
        episodes_seen = state.episodes + len(episodes)
        if cfg.prior_explore:
            cohort = _draw(weights, item.player, episodes_seen)
            model = means[cohort]  # (A, d)
            spread = explore_spread(lib, cfg)
            if spread > 0:  # and within it: a model drawn with the spread the player's data leaves
                rng = _generator(item.player, episodes_seen, "model")
                model = draw_from_data_spread(self.mean[cohort], self.cov[cohort], stats, lib.noise_var, spread, rng)
        else:
            cohort, model = -1, torch.einsum("k,kad->ad", weights, means)
        delta = share * lib.beta * model @ lib.basis  # (A, H)
        masks = _masks(episodes, delta.shape[0])
        delta, kl, scale = self._bound_kl(rows.hidden, masks, delta)
        params = weight_delta_row(self.family, self.last_layer, delta.float())
        new_state = PosteriorState(
            stats,
            episodes_seen,
            weights,
            cohort,
            evidence,
            share,
            changes,
            state.log_prior,
            state.warm_from,
            trials,
            suspect,
        )
        return UpdateOutcome(
            item.player,
            params,
            kl_to_base=kl,
            kl_scaled=scale,
            steps=len(rows.actions),
            mean_return=float(np.mean([ep.total_reward for ep in episodes])),
            state=new_state,
            prior=new_state.describe(),
        )

    def _posterior(
        self, past: Stats, features: torch.Tensor, rows: Decisions
    ) -> tuple[Stats, torch.Tensor, torch.Tensor]:
        """The statistics `past` plus these decisions (features (T, d)), each cohort's log
        evidence under them (K + 1,) and each cohort's posterior mean model (K + 1, A, d)."""
        stats = past.add(features, rows.actions, rows.targets)
        fit, means = evidence_and_mean(self.mean, self.cov, stats, self.library.noise_var)
        return stats, fit, means

    def _change_point(
        self,
        state: PosteriorState,
        crossed: bool,
        alone: tuple[Stats, torch.Tensor, torch.Tensor],
        log_prior: torch.Tensor,
        features: torch.Tensor,
        rows: Decisions,
        history: float,
        population: float,
    ) -> tuple[tuple[Stats, torch.Tensor, torch.Tensor] | None, Stats | None]:
        """The change-point test: (the posterior to start again from, None where the style
        holds; the statistics of a suspect episode to carry to the next update). `crossed`:
        these episodes crossed ``prior_change_nats``; `alone`: their posterior without the
        past; `history`, `population`: log p(new | past, cohorts) and log p(new | cohorts).
        Without ``prior_change_confirm`` a crossing is a change at once. With it, a crossing
        is a suspect, and the next update confirms it when the suspect episode predicts the
        new decisions better than both (a style of its own, not an odd bout)."""
        if not self.config.prior_change_confirm:
            return (alone if crossed else None), None
        if state.suspect is not None:
            since = self._posterior(state.suspect, features, rows)  # the new style from the suspect episode on
            if self._predicted(log_prior, state.suspect, since[1]) > max(history, population):
                return since, None
        return None, (alone[0] if crossed else None)

    def _predicted(self, log_prior: torch.Tensor, past: Stats, fit: torch.Tensor) -> float:
        """log p(new decisions | past, cohorts): `fit` (K + 1,) is each cohort's log evidence of
        the past plus the new decisions, `log_prior` (K + 1,) the player's prior over cohorts."""
        before = torch.logsumexp(log_prior + log_evidence(self.mean, self.cov, past, self.library.noise_var), 0)
        return float(torch.logsumexp(log_prior + fit, 0) - before)

    def _measured_gain(self, log_prior: torch.Tensor, past: Stats, joined: Stats, new: Stats) -> float:
        """log p(new | past, cohorts) - log p(new | cohorts), nats, through the cohorts as measured
        (``trust_cov``): how much better the player's history predicted the new decisions than the
        population alone. `joined` holds the past and the new decisions, `new` the new ones alone."""

        def predictive(stats: Stats) -> torch.Tensor:  # log p(stats' data | cohorts)
            return torch.logsumexp(
                log_prior + log_evidence(self.mean, self.trust_cov, stats, self.library.noise_var), 0
            )

        return float(predictive(joined) - predictive(past) - predictive(new))

    def _trust(
        self, state: PosteriorState, step: float, changed: bool, had_past: bool, decay: float
    ) -> tuple[float, tuple[float, float, float], float]:
        """The validation gate after one more episode whose clipped log Bayes factor is `step`:
        (the trust statistic, the t-test's trials, the share of the tilt served). A change of
        style drops the trust earned; a first episode (no past to predict from) is no trial."""
        cfg = self.config
        if cfg.prior_trust_test == "sum":
            if changed:
                evidence = min(decay * state.evidence, 0.0)
            else:
                evidence = float(
                    np.clip(decay * state.evidence + step, -cfg.prior_evidence_cap, cfg.prior_evidence_cap)
                )
            return evidence, state.trials, ramp(evidence, cfg.prior_trust_open, cfg.prior_trust_nats)
        if changed:
            trials = (0.0, 0.0, 0.0)
        else:
            trials = add_trial(state.trials, step, decay) if had_past else state.trials
        t = t_stat(trials, cfg)
        return t, trials, ramp(t, self.t_open, self.t_full)

    def _bound_kl(
        self, hidden: torch.Tensor, masks: torch.Tensor | None, delta: torch.Tensor, iters: int = 12
    ) -> tuple[torch.Tensor, float, float]:
        """delta (A, H) scaled so that the mean KL(adapted || base) over the decisions' hidden
        features (T, H) stays within the bound."""
        last = cast(torch.nn.Linear, self.policy.actor[-1])  # the actor is a ModuleList of Linears
        with torch.inference_mode():  # the base's logits from the last layer alone: hidden is its input
            logits = last(hidden.to(last.weight.device)).double().cpu()  # (T, A)
        base = masked_log_probs(logits, masks)  # (T, A), -inf where masked
        allowed = torch.isfinite(base)  # (T, A)
        shift = hidden.double() @ delta.T  # (T, A)

        def kl(scale: float) -> float:
            return float(masked_kl_rows(masked_log_probs(base + scale * shift), base, allowed).mean())

        bound, value = self.config.kl_bound, kl(1.0)
        if bound <= 0 or value <= bound:
            return delta, value, 1.0
        lo, hi = 0.0, 1.0
        for _ in range(iters):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if kl(mid) <= bound else (lo, mid)
        return delta * lo, kl(lo), lo


def explore_spread(library: Library, config: OnlineConfig) -> float:
    """The within-cohort draw's spread in use: the library's, unless ``prior_explore_spread`` overrides it."""
    return library.explore_spread if config.prior_explore_spread is None else config.prior_explore_spread


def new_player_state(library: Library, new_cohort: float) -> PosteriorState:
    """A player with no data: the prior's cohort weights (and the broad cohort's), nothing served."""
    n_actions, d = library.mean.shape[1:]
    return PosteriorState(Stats.empty(n_actions, d), 0, with_new_cohort(library, new_cohort)[2].exp(), -1)


def with_new_cohort(library: Library, weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The library's K cohorts plus a broad one for players unlike any of them (weight `weight`):
    centred on the population's model, with the spread of the cohort models around it plus
    their own covariance, so its posterior is close to a purely personal model.
    Returns mean (K + 1, A, d), cov (K + 1, A, d, d), log weights (K + 1,)."""
    w = library.log_weights.exp()  # (K,)
    centre = library.population_mean  # (A, d)
    spread = library.mean - centre  # (K, A, d)
    between = torch.einsum("k,kai,kaj->aij", w, spread, spread)  # (A, d, d)
    within = torch.einsum("k,kaij->aij", w, library.cov)
    cov = 4.0 * (between + within)
    log_w = torch.cat([torch.log(w * (1 - weight)), torch.tensor([np.log(weight)], dtype=torch.float64)])
    return torch.cat([library.mean, centre[None]]), torch.cat([library.cov, cov[None]]), log_w


def _decayed(stats: Stats, factor: float) -> Stats:
    """Statistics with every past row's weight multiplied by `factor` (evidence fades)."""
    return Stats(*(part * factor for part in stats))


def _draw(weights: torch.Tensor, player: str, episodes: int) -> int:
    """A cohort drawn with probability `weights` (K,), reproducible per player and episode count."""
    return int(draw_categorical_torch(weights.float(), _generator(player, episodes)))


def _generator(player: str, episodes: int, what: str = "") -> torch.Generator:
    """A random stream reproducible per player, episode count and what it draws (the cohort:
    "", the seed the cohort draws have always had)."""
    return torch.Generator().manual_seed(zlib.crc32(f"{player}\0{episodes}{what}".encode()))


def _masks(episodes: Sequence[Episode], n_actions: int) -> torch.Tensor | None:
    """(T, A) bool action masks of the episodes' decisions, or None where no decision had one."""
    flat = [m for ep in episodes for m in ep.mask]
    if all(m is None for m in flat):
        return None
    return torch.as_tensor(np.stack([np.ones(n_actions, bool) if m is None else m for m in flat]))
