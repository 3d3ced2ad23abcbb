"""Building blocks of the population prior: conjugate posteriors, evidence, mixture
weights, and a last-layer weight delta expressed exactly as a LoRA adapter row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npcadapt.bench.baselines import NeuralLinearHost, ThompsonSettings
from npcadapt.engine import Engine
from npcadapt.errors import InvalidInputError
from npcadapt.prior.bayes import Stats, cohort_weights, draw_from_data_spread, log_evidence, posterior
from npcadapt.prior.head import weight_delta_row
from npcadapt.training.online import OnlineConfig

A, H = 3, 4


def _data(seed: int, n: int = 40):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, H, generator=g, dtype=torch.float64)
    actions = torch.randint(0, A, (n,), generator=g)
    return h, actions, torch.randn(n, generator=g, dtype=torch.float64)


def test_posterior_from_statistics_equals_rank_one_updates():
    """The same numbers as the NeuralLinear baseline's sequential (Kalman) updates."""
    h, actions, y = _data(0)
    host = NeuralLinearHost.__new__(NeuralLinearHost)  # only its update rule is used
    host.settings = ThompsonSettings(noise_std=0.5, weight_precision=2.0)
    host.n_actions, host.dim, host.index = A, H, {}
    host.prior_mean = np.zeros((A, H))
    host.mean, host.cov = np.empty((0, A, H)), np.empty((0, A, H, H))
    host.observe("p", list(h.numpy()), list(actions.numpy()), y.numpy())
    mean, cov = posterior(
        torch.zeros(A, H, dtype=torch.float64),
        torch.eye(H, dtype=torch.float64).expand(A, H, H) / 2.0,
        Stats.empty(A, H).add(h, actions, y),
        0.25,
    )
    np.testing.assert_allclose(mean.numpy(), host.mean[0], atol=1e-10)
    np.testing.assert_allclose(cov.numpy(), host.cov[0], atol=1e-10)


def test_log_evidence_is_the_gaussian_marginal_likelihood():
    h, actions, y = _data(1, n=12)
    g = torch.Generator().manual_seed(2)
    m0 = torch.randn(A, H, generator=g, dtype=torch.float64)
    root = torch.randn(A, H, H, generator=g, dtype=torch.float64)
    s0 = root @ root.transpose(-1, -2) + torch.eye(H, dtype=torch.float64)
    noise = 0.3
    expected = 0.0
    for a in range(A):  # y_a ~ N(H_a m0_a, noise I + H_a S0_a H_a^T), actions independent
        rows = actions == a
        ha = h[rows]
        dist = torch.distributions.MultivariateNormal(
            ha @ m0[a], noise * torch.eye(len(ha), dtype=torch.float64) + ha @ s0[a] @ ha.T
        )
        expected += float(dist.log_prob(y[rows]))
    assert float(log_evidence(m0, s0, Stats.empty(A, H).add(h, actions, y), noise)) == pytest.approx(expected, abs=1e-8)


def test_cohort_weights_find_the_cohort_that_generated_the_rewards():
    g = torch.Generator().manual_seed(3)
    cohorts = torch.randn(4, A, H, generator=g, dtype=torch.float64)  # (K, A, H) true weights
    cov = torch.eye(H, dtype=torch.float64).expand(4, A, H, H) * 0.01
    h = torch.randn(24, H, generator=g, dtype=torch.float64)
    actions = torch.randint(0, A, (24,), generator=g)
    y = (h * cohorts[2, actions]).sum(-1) + 0.1 * torch.randn(24, generator=g, dtype=torch.float64)
    stats = Stats.empty(A, H).add(h, actions, y)
    log_w = torch.log(torch.full((4,), 0.25, dtype=torch.float64))
    weights = cohort_weights(log_w, cohorts, cov, stats, 0.01)
    assert int(weights.argmax()) == 2 and float(weights[2]) > 0.99
    means, _ = posterior(cohorts, cov, stats, 0.01)
    assert torch.allclose(torch.einsum("k,kah->ah", weights, means), cohorts[2], atol=0.1)  # the mixture's mean
    # with no data the weights are the prior's
    assert torch.allclose(cohort_weights(log_w, cohorts, cov, Stats.empty(A, H), 0.01), log_w.exp())


@pytest.mark.parametrize("decisions", [0, 4, 40, 4000])
def test_exploration_draws_have_the_spread_the_players_data_leaves(decisions):
    """draw_from_data_spread: centred on the posterior mean with covariance scale^2 S_N G S_N / s2
    (the posterior's spread less the prior's own; with much data, nearly S_N itself), so no
    data means no exploration."""
    g = torch.Generator().manual_seed(4)
    m0 = torch.randn(A, H, generator=g, dtype=torch.float64)
    root = torch.randn(A, H, H, generator=g, dtype=torch.float64)
    s0 = root @ root.transpose(-1, -2) / H + 0.1 * torch.eye(H, dtype=torch.float64)  # (A, H, H)
    h, actions, y = _data(5, n=decisions)
    stats = Stats.empty(A, H).add(h, actions, y)
    noise, scale, n = 0.3, 0.5, 20000
    mean, cov = posterior(m0, s0, stats, noise)
    many = Stats(*(part.expand(n, *part.shape) for part in stats))  # n copies: one call draws them all
    draws = draw_from_data_spread(m0, s0, many, noise, scale, torch.Generator().manual_seed(6))  # (n, A, H)
    spread = cov @ stats.gram @ cov / noise * scale**2  # (A, H, H)
    centred = draws - mean
    empirical = torch.einsum("nai,naj->aij", centred, centred) / n
    size = float(spread.diagonal(dim1=-2, dim2=-1).sum(-1).max()) + 1e-12
    assert float((empirical - spread).abs().max()) <= 0.05 * size  # the covariance above, to sampling error
    assert float(centred.mean(0).abs().max()) <= 0.05 * size**0.5 + 1e-12  # centred on the posterior mean
    if decisions == 0:
        assert torch.allclose(draws, mean.expand_as(draws), rtol=0, atol=1e-12)  # nothing to explore yet


@pytest.mark.parametrize("rank_deficit", [False, True])
def test_a_last_layer_delta_is_served_exactly_as_a_lora_row(tmp_path, arch_root, rank_deficit):
    """logits(adapter) = base logits + delta h on the engine's real forward (tiny: 4 actions, rank 8)."""
    eng = Engine(tmp_path / "d", archetype_dirs=[arch_root])
    rt = eng.runtime("tiny")
    policy, layout = rt.archetype.policy, rt.layout
    last = f"actor.{len(policy.actor) - 1}"
    d_out, d_in = policy.actor[-1].out_features, policy.actor[-1].in_features
    g = torch.Generator().manual_seed(4)
    delta = torch.randn(d_out, d_in, generator=g)
    if rank_deficit:
        delta = torch.randn(d_out, 1, generator=g) @ torch.randn(1, d_in, generator=g)
    eng.set_adapter_row("tiny", "p", weight_delta_row(layout, last, delta))
    obs = torch.randn(5, 6, generator=g)
    with torch.inference_mode():
        expected = policy.logits(obs) + policy.actor_features(obs) @ delta.T
    probs = eng.action_probs("tiny", ["p"] * 5, obs.numpy())
    np.testing.assert_allclose(probs, torch.softmax(expected, -1).numpy(), atol=1e-5)
    with pytest.raises(InvalidInputError, match="shape"):
        weight_delta_row(layout, last, delta.T)
    with pytest.raises(InvalidInputError, match="no LoRA"):
        weight_delta_row(layout, "critic.0", delta)
    eng.close()


# -- the library, built from recorded sessions ------------------------------------------------
@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Sessions of 3 players per named Duel persona, 16 episodes each, recorded by the Service as
    scripts/build_priors.py records them (PPO adapting from the base, so the data does not
    depend on how the prior serves)."""
    import npcadapt
    from npcadapt.recordings import read_episodes
    from npcadapt.simulation import run_simulation

    data = tmp_path_factory.mktemp("recorded")
    with npcadapt.open(data, seed=0, online=OnlineConfig(prior=False)) as svc:
        env_personas = (
            "brawler",
            "high_blocker",
            "low_sweeper",
            "rusher",
            "counter_puncher",
            "turtle",
            "jumper",
            "zoner",
        )
        run_simulation(
            svc,
            "npcadapt/Duel-v0",
            "duelist",
            players=0,
            episodes=16,
            seed=0,
            persona_counts=dict.fromkeys(env_personas, 3),
        )
        svc.flush()
        arch = svc.archetypes["duelist"]
    episodes, _ = read_episodes(data / "logs", archetypes=["duelist"])
    return arch, {player: eps for (_, player), eps in episodes.items()}, data / "logs"


def test_library_cohorts_group_players_of_the_same_persona(recorded):
    from npcadapt.prior.library import LibraryConfig, build_library

    arch, episodes, _ = recorded
    library, cohort_of = build_library(arch, episodes, LibraryConfig(cohorts=8, seed=0))
    assert library.mean.shape == (library.cohorts, 8, 16) and library.cov.shape[-2:] == (16, 16)
    assert library.basis.shape == (16, 64) and library.beta > 0 and library.gamma == 0.0
    assert torch.allclose(library.log_weights.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    by_persona: dict[str, list[int]] = {}
    for player, cohort in cohort_of.items():
        by_persona.setdefault(player.rsplit("-", 1)[0], []).append(cohort)
    # most personas keep all their players in one cohort, and distinct personas mostly get distinct cohorts
    pure = sum(len(set(c)) == 1 for c in by_persona.values())
    assert pure >= 5, by_persona
    majority = {p: max(set(c), key=c.count) for p, c in by_persona.items()}
    assert len(set(majority.values())) >= 6, majority


def test_noise_variance_is_estimated_from_the_players_own_residuals(recorded):
    from npcadapt.prior.library import NOISE_IN_SAMPLE_FACTOR, LibraryConfig, build_library

    arch, episodes, _ = recorded
    estimated, _ = build_library(arch, episodes, LibraryConfig(cohorts=4, seed=0))
    fixed, _ = build_library(arch, episodes, LibraryConfig(cohorts=4, seed=0, noise_var=0.25))
    assert fixed.noise_var == 0.25
    target_var = estimated.meta["target_std"] ** 2
    # each player's own model explains part of the reward: below the targets' variance, above zero
    assert 0.01 < estimated.noise_var < NOISE_IN_SAMPLE_FACTOR * target_var
    assert estimated.meta["noise_var"] == estimated.noise_var != 0.25
    assert not torch.allclose(estimated.cov, fixed.cov)  # the cohorts' posteriors use it


def test_library_round_trip_and_refusals(recorded, tmp_path):
    from dataclasses import replace

    from safetensors import safe_open
    from safetensors.torch import load_file, save

    from npcadapt.errors import AdapterMismatchError, StoreError
    from npcadapt.prior.library import LibraryConfig, build_library
    from npcadapt.prior.library_file import load_library, save_library

    arch, episodes, _ = recorded
    library, cohort_of = build_library(arch, episodes, LibraryConfig(cohorts=4, seed=1))
    path = save_library(library, tmp_path / "prior.safetensors")
    loaded = load_library(path, arch)
    assert torch.equal(loaded.mean, library.mean) and torch.equal(loaded.basis, library.basis)
    assert (loaded.noise_var, loaded.beta, loaded.gamma) == (library.noise_var, library.beta, library.gamma)
    assert load_library(save_library(replace(library, explore_spread=0.25), path), arch).explore_spread == 0.25
    assert (loaded.trust_t_open, loaded.trust_t_full) == (1.0, 4.0)  # LibraryConfig's defaults
    old_file = tmp_path / "old_trust.safetensors"
    with safe_open(path, "pt") as f:
        metadata = {k: v for k, v in f.metadata().items() if not k.startswith("trust_t_")}
    old_file.write_bytes(save(load_file(path), metadata=metadata))
    assert (load_library(old_file, arch).trust_t_open, load_library(old_file, arch).trust_t_full) == (1.0, 4.0)
    lowered = load_library(save_library(replace(library, trust_t_open=0.5, trust_t_full=3.0), path), arch)
    assert (lowered.trust_t_open, lowered.trust_t_full) == (0.5, 3.0)
    for t_open, t_full in ((3.0, 3.0), (float("nan"), 3.0), (0.5, float("inf"))):  # full must be above open
        bad = save_library(replace(library, trust_t_open=t_open, trust_t_full=t_full), tmp_path / "bad.safetensors")
        with pytest.raises(StoreError, match="trust thresholds"):
            load_library(bad, arch)
    path = save_library(library, path)
    assert loaded.meta["players"] == 24 and sum(loaded.meta["cohort_sizes"]) == 24
    assert loaded.widening == 50.0  # LibraryConfig.inflate, which the trust test divides out
    assert torch.equal(loaded.member_spread, library.member_spread)
    _check_member_spread(library, arch, episodes, cohort_of, LibraryConfig().weight_precision)
    spread = library.member_spread
    asymmetric = spread.clone()
    asymmetric[0, 0, 0, 1] += 1.0
    nan = spread.clone()
    nan[0, 0, 0, 0] = float("nan")
    eye = torch.eye(spread.shape[-1], dtype=spread.dtype)
    for bad_spread in (spread[:-1], asymmetric, -spread - 1e-3 * eye, nan):
        bad = save_library(replace(library, member_spread=bad_spread), tmp_path / "bad.safetensors")
        with pytest.raises(StoreError, match="member_spread"):
            load_library(bad, arch)
    nearly_negative = spread.clone()
    nearly_negative[1:] = -9e-4 * eye  # within the PSD check's tolerance next to a huge cohort 0
    nearly_negative[0] = 1e6 * eye
    for bad_spread in (1e300 * eye.expand_as(spread).clone(), nearly_negative):
        bad = save_library(replace(library, member_spread=bad_spread), tmp_path / "bad.safetensors")
        with pytest.raises(StoreError, match=r"cov / widening \+ member_spread has variances"):
            load_library(bad, arch)
    bad = save_library(replace(library, cov=library.cov * 1e-12), tmp_path / "bad.safetensors")
    with pytest.raises(StoreError, match=r"cov has variances"):
        load_library(bad, arch)
    assert (
        load_library(save_library(replace(library, member_spread=None), tmp_path / "s.safetensors"), arch).member_spread
        is None
    )
    hostile = ([], {"inflate": 0.5}, {"inflate": "wide"}, {"inflate": float("nan")}, {"inflate": 1e300})
    for config in hostile:  # not a dict; below 1; not a number; NaN; so wide it would underflow
        bad = save_library(replace(library, meta={**library.meta, "config": config}), tmp_path / "bad.safetensors")
        with pytest.raises(StoreError, match=r"damaged metadata|widening"):
            load_library(bad, arch)
    assert load_library(save_library(replace(library, meta={}), tmp_path / "old.safetensors"), arch).widening == 1.0
    with pytest.raises(AdapterMismatchError, match="train library"):
        load_library(path, replace(arch, base_hash="0" * 16))  # built on another base: stale
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(path.read_bytes()[:100])
    with pytest.raises(StoreError, match="cannot be read"):
        load_library(damaged, arch)
    with pytest.raises(StoreError, match="does not exist"):
        load_library(tmp_path / "missing.safetensors", arch)
    with pytest.raises(InvalidInputError, match="cohorts"):
        build_library(arch, episodes, LibraryConfig(cohorts=100))


def _check_member_spread(library, arch, episodes, cohort_of, weight_precision) -> None:
    """Each cohort's member spread is the mean outer product of its members' own models (from
    the broad prior, as the build fits them) less the cohort's model: recomputed here player by
    player; a cohort of one player has none, a larger one some."""
    from npcadapt.prior.bayes import Stats, posterior
    from npcadapt.prior.library import decisions

    n_actions, d = library.mean.shape[1:]
    prior_mean = torch.zeros(n_actions, d, dtype=torch.float64)
    prior_cov = torch.eye(d, dtype=torch.float64).expand(n_actions, d, d) / weight_precision
    models: dict[int, list[torch.Tensor]] = {}
    for player, cohort in cohort_of.items():
        rows = decisions(arch.policy, episodes[player], library.gamma)
        stats = Stats.empty(n_actions, d).add(library.features(rows.hidden), rows.actions, rows.targets)
        models.setdefault(cohort, []).append(posterior(prior_mean, prior_cov, stats, library.noise_var)[0])
    assert sorted(models) == list(range(library.cohorts))  # no cohort came out empty with these settings
    for k, members in models.items():
        offsets = torch.stack(members) - library.mean[k]  # (n, A, d)
        expected = torch.einsum("nai,naj->aij", offsets, offsets) / len(members)
        assert torch.allclose(library.member_spread[k], expected, atol=1e-12)
        assert (float(expected.abs().max()) > 0) == (len(members) > 1)


def test_train_library_command_writes_a_loadable_prior(recorded, tmp_path, capsys):
    from npcadapt.cli import main
    from npcadapt.prior.library_file import load_library

    arch, _, logs = recorded
    out = tmp_path / "prior.safetensors"
    assert (
        main(["train", "library", "--archetype", "duelist", "--logs", str(logs), "--cohorts", "5", "--out", str(out)])
        == 0
    )
    assert "5 cohorts from 24 recorded players" in capsys.readouterr().out
    library = load_library(out, arch)
    assert library.cohorts == 5 and library.basis.shape[0] == 16  # the default feature size
    args = ["train", "library", "--archetype", "duelist", "--logs", str(logs), "--cohorts", "5", "--out", str(out)]
    assert main([*args, "--features", "8"]) == 0
    library = load_library(out, arch)
    assert library.basis.shape[0] == library.mean.shape[-1] == 8
    assert library.explore_spread == 0.0  # the default: serve the posterior mean
    assert main([*args, "--explore-spread", "0.5"]) == 0
    assert load_library(out, arch).explore_spread == 0.5
    assert main([*args, "--trust-t-open", "0.5", "--trust-t-full", "3"]) == 0
    library = load_library(out, arch)
    assert (library.trust_t_open, library.trust_t_full) == (0.5, 3.0)
    assert main([*args, "--trust-t-open", "2", "--trust-t-full", "1"]) == 2
    assert "trust_t_full must be finite and > trust_t_open" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--explore-spread", "-1"])
    assert "--explore-spread: must be a finite number >= 0" in capsys.readouterr().err
    assert main(["train", "library", "--archetype", "duelist", "--logs", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_ray_engine_builds_the_same_library_as_local(recorded):
    pytest.importorskip("ray")
    from npcadapt.prior.library import LibraryConfig, build_library
    from npcadapt.training.ray_backend import RayDecisions

    arch, episodes, _ = recorded
    config = LibraryConfig(cohorts=6, seed=2)
    local, local_cohorts = build_library(arch, episodes, config)
    rows_of = RayDecisions(arch.directory, workers=2, players_per_task=5)
    try:
        remote, remote_cohorts = build_library(arch, episodes, config, rows_of)
    finally:
        rows_of.shutdown()
    assert remote_cohorts == local_cohorts
    assert torch.allclose(remote.mean, local.mean, atol=1e-9) and torch.allclose(remote.basis, local.basis, atol=1e-9)


def test_transfer_matrices_link_the_cohorts_of_players_shared_between_archetypes(tmp_path):
    """One population plays Duel and Merchant under the same ids (sim/traits.py); the
    merchant prior's transfer from the duelist's cohorts sends each trait to its own cohort."""
    import npcadapt
    from npcadapt.prior.library import LibraryConfig, build_library, with_transfers
    from npcadapt.recordings import read_episodes
    from npcadapt.simulation import run_simulation, trait_counts, trait_players
    from npcadapt.training.online import OnlineConfig
    from sim.traits import TRAITS

    envs = {"npcadapt/Duel-v0": "duelist", "npcadapt/Merchant-v0": "merchant"}
    with npcadapt.open(tmp_path, seed=0, online=OnlineConfig(prior=False)) as svc:
        for env_id, arch_name in envs.items():
            run_simulation(
                svc,
                env_id,
                arch_name,
                players=0,
                episodes=12,
                seed=1,
                persona_counts=trait_counts(env_id, 2),
                player_ids=trait_players(env_id, 2),
            )
        archs = {name: svc.archetypes[name] for name in envs.values()}
    episodes, _ = read_episodes(tmp_path / "logs")
    by_arch = {name: {p: e for (a, p), e in episodes.items() if a == name} for name in envs.values()}
    duel, duel_cohorts = build_library(archs["duelist"], by_arch["duelist"], LibraryConfig(cohorts=8))
    merchant, merchant_cohorts = build_library(archs["merchant"], by_arch["merchant"], LibraryConfig(cohorts=8))
    linked = with_transfers(merchant, merchant_cohorts, {"duelist": (duel, archs["duelist"])}, by_arch)
    matrix = linked.transfer["duelist"]  # (8, 8) P(merchant cohort | duelist cohort)
    assert linked.transfer_from == {"duelist": duel.fingerprint}
    assert torch.allclose(matrix.sum(1), torch.ones(8, dtype=torch.float64))
    hits = 0
    for trait in TRAITS:  # a player's duel cohort predicts their merchant cohort
        for j in range(2):
            player = f"player-{trait}-{j}"
            hits += int(matrix[duel_cohorts[player]].argmax()) == merchant_cohorts[player]
    assert hits >= 10, hits  # of 16 (chance: about 2)


def test_trust_t_test_rewards_a_steady_edge_not_one_that_comes_and_goes():
    """The gate's t-statistic of per-episode log Bayes factors: a small steady edge (a player
    who keeps one style) passes prior_t_full within a few episodes; an edge of the same mean
    that swings between helping and misleading (an average player) never opens the tilt at a
    library's default thresholds (t from 1 to 4), where the decayed sum of the same values would
    have trusted it; at the lower bar most shipped priors use (0.5 to 3) it opens a sliver."""
    from npcadapt.prior.library import LibraryConfig
    from npcadapt.prior.trust import add_trial, ramp, t_stat
    from npcadapt.training.online import OnlineConfig

    cfg, lib = OnlineConfig(), LibraryConfig()
    assert (cfg.prior_trust_test, cfg.prior_t_open, cfg.prior_t_full) == ("t", None, None)  # the library's
    assert (lib.trust_t_open, lib.trust_t_full) == (1.0, 4.0)

    def run(values):
        trials, sum_evidence = (0.0, 0.0, 0.0), 0.0
        for g in values:
            trials = add_trial(trials, g, cfg.prior_decay)  # the trainer's own update of the t-test
            sum_evidence = cfg.prior_decay * sum_evidence + g
        return t_stat(trials, cfg), sum_evidence

    steady, _ = run([1.5] * 4)
    swinging, summed = run([4.0, -3.0] * 20)  # mean +0.5 nats an episode
    assert steady >= lib.trust_t_full
    assert swinging < lib.trust_t_open
    assert ramp(swinging, 0.5, 3.0) < 0.01  # the shipped duelist's bar: a share of 0.6%
    assert summed > cfg.prior_trust_open  # the "sum" test would serve it (most of it)
    assert t_stat((0.0, 0.0, 0.0), cfg) == 0.0  # no trial yet: no trust
