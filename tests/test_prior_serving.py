"""The population prior in serving: loaded beside the archetype, a per-player posterior
served as a LoRA row after every episode, trust earned by evidence, drift, isolation."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

import npcadapt
from npcadapt.archetypes import BUILTIN_DIR
from npcadapt.errors import StoreError
from npcadapt.prior.library_file import LIBRARY_NAME, find_library, load_library, save_library
from npcadapt.simulation import run_simulation
from npcadapt.training.online import OnlineConfig

DUEL = "npcadapt/Duel-v0"


def _play(svc, personas: dict[str, int], episodes: int, on_episode=None, **kw) -> dict:
    return run_simulation(
        svc, DUEL, "duelist", players=0, episodes=episodes, seed=3, persona_counts=personas, on_episode=on_episode, **kw
    )


def test_shipped_archetypes_carry_a_fresh_prior_that_the_service_loads(tmp_path):
    with npcadapt.open(tmp_path, record=False, seed=0) as svc:
        assert sorted(svc.libraries) == sorted(svc.archetypes)  # every built-in archetype ships one
        info = svc.prior_info("duelist", "new-player")
        assert info["episodes"] == 0 and 0 < info["confidence"] < 1  # a new player: the prior's weights
    with npcadapt.open(tmp_path, record=False, online=OnlineConfig(prior=False)) as svc:
        assert svc.libraries == {} and svc.prior_info("duelist", "p") is None


def test_a_consistent_player_is_served_their_cohort_within_a_few_episodes_and_a_mixed_one_stays_at_base(tmp_path):
    """brawler keeps one style: trust and a large gain by episode 5. 'average' is a different
    persona every bout: no history predicts it, so it keeps the base (no loss)."""
    with npcadapt.open(tmp_path, record=False, seed=0) as svc:
        report = _play(svc, {"brawler": 2, "average": 2}, episodes=6)
        brawler, average = svc.prior_info("duelist", "brawler-0"), svc.prior_info("duelist", "average-0")
    assert brawler["share"] == 1.0 and brawler["confidence"] > 0.9 and brawler["episodes"] == 6
    assert report["personas"]["brawler"]["gain_curve"][4] > 0.6
    assert average["share"] == 0.0 and average["evidence"] < 3.0
    assert report["personas"]["average"]["adapted_return"] == pytest.approx(
        report["personas"]["average"]["base_return"]
    )


def test_an_average_haggler_earns_no_trust_against_the_cohorts_as_measured(tmp_path):
    """'average' is a different trader every episode. Against the widened cohorts their
    pooled history predicts better than the vaguer population, so they are trusted and served
    a tilt that loses return (sessions 8-13); through the cohorts as measured they are not."""
    seen = {}
    for null in ("widened", "measured"):
        with npcadapt.open(tmp_path / null, record=False, seed=0, online=OnlineConfig(prior_trust_null=null)) as svc:
            report = run_simulation(
                svc, "npcadapt/Haggle-v0", "haggler", players=0, episodes=30, seed=3, persona_counts={"average": 4}
            )
            shares = [svc.prior_info("haggler", f"average-{i}")["share"] for i in range(4)]
        average = report["personas"]["average"]
        seen[null] = (shares, average["adapted_return"] - average["base_return"])
    assert np.mean(seen["widened"][0]) > 0.5 and seen["widened"][1] < -0.05
    assert seen["measured"] == ([0.0] * 4, 0.0)


@pytest.mark.parametrize("forget,confirm", [("always", False), ("surprise", False), ("surprise", True)])
def test_a_player_who_changes_style_loses_trust_then_is_readapted(tmp_path, forget, confirm):
    seen = []
    settings = OnlineConfig(prior_forget=forget, prior_change_confirm=confirm)
    with npcadapt.open(tmp_path, record=False, seed=0, online=settings) as svc:
        report = _play(
            svc,
            {"brawler": 0},
            episodes=40,
            switch_players=1,
            switch_at=12,
            on_episode=lambda e: seen.append(svc.prior_info("duelist", "brawler>turtle-0")),
        )
    before, after = seen[11], seen[12 + confirm]  # a confirmed change waits for the bout after the suspect one
    if confirm:  # the suspect bout itself changes nothing yet: the NPC is still served a tilt
        assert seen[12]["changes"] == 0 and seen[12]["share"] > 0 and seen[12]["suspected_change"]
    assert not after["suspected_change"]
    # trusted on the first style (one odd bout lowers the t-statistic for a while); the change costs the trust
    assert before["share"] > 0.5 and after["share"] == 0.0 and after["evidence"] < before["evidence"]
    assert before["changes"] == 0 and after["changes"] == 1 and after["decisions"] == 12 * (1 + confirm)
    curve = report["personas"]["brawler>turtle"]["gain_curve"]
    assert curve[11] > 0.8 and max(curve[12:]) > 0.8  # adapted to the first style, then to the second
    assert seen[-1]["cohort"] != seen[11]["cohort"]


def test_a_steady_player_keeps_all_their_evidence_when_the_past_fades_only_on_surprise(tmp_path):
    """prior_forget="surprise": a player whose episodes their history predicts keeps their
    decisions (no fading), so their model keeps sharpening; "always" fades them by prior_decay."""
    kept = {}
    for forget in ("always", "surprise"):
        with npcadapt.open(tmp_path / forget, record=False, seed=0, online=OnlineConfig(prior_forget=forget)) as svc:
            _play(svc, {"brawler": 1}, episodes=10)
            kept[forget] = svc.prior_info("duelist", "brawler-0")
    assert kept["surprise"]["episodes"] == kept["always"]["episodes"] == 10
    assert (
        kept["surprise"]["decisions"] > 0.95 * 10 * 12
    )  # (nearly) every decision of 10 bouts: one odd bout faded them once
    assert kept["always"]["decisions"] == pytest.approx(12 * sum(0.95**k for k in range(10)), abs=0.05)  # 0.95 a bout
    assert kept["surprise"]["confidence"] > 0.9 and kept["surprise"]["share"] > 0.5


def test_a_returning_player_keeps_an_adapted_npc_after_a_restart(tmp_path):
    """The posterior's statistics live in memory; a restart must not send a trusted player back to the base."""
    with npcadapt.open(tmp_path, record=False, seed=0) as svc:
        _play(svc, {"brawler": 1}, episodes=6)
        assert svc.prior_info("duelist", "brawler-0")["share"] == 1.0
    with npcadapt.open(tmp_path, record=False, seed=0) as svc:
        assert svc.prior_info("duelist", "brawler-0")["episodes"] == 0  # nothing known after the restart ...
        report = _play(svc, {"brawler": 1}, episodes=1)
        info = svc.prior_info("duelist", "brawler-0")
    assert info["episodes"] == 1 and info["share"] > 0.5  # ... but the trust the served adapter stands for is kept
    assert report["personas"]["brawler"]["gain_curve"][0] > 0.2  # the base would be 0


def test_the_kl_bound_holds_for_the_prior(tmp_path):
    with npcadapt.open(tmp_path, record=False, seed=0, online=OnlineConfig(kl_bound=0.05)) as svc:
        report = _play(svc, {"brawler": 2, "turtle": 2}, episodes=6)
    for persona in ("brawler", "turtle"):
        # the bound holds on the player's own observations; the loop's situation-weighted KL is close to it
        assert report["personas"][persona]["kl_to_base"] < 0.1


def test_one_players_update_never_changes_anothers_outputs(tmp_path):
    obs = np.random.default_rng(0).random((16, 8), dtype=np.float32)
    with npcadapt.open(tmp_path, record=False, seed=0) as svc:
        _play(svc, {"brawler": 1, "turtle": 1}, episodes=3)
        row = svc.engine.adapter_row("duelist", "turtle-0").clone()
        before = svc.action_probs("duelist", ["turtle-0"] * 16, obs)
        brawler = svc.engine.adapter_row("duelist", "brawler-0").clone()
        for _ in range(3):  # only brawler-0 plays and trains
            decision = svc.act("duelist", "brawler-0", obs[0])
            svc.feedback("brawler-0", "npc", 1.0, done=True)
            assert svc.train_pending() == 1, decision
        assert not torch.equal(svc.engine.adapter_row("duelist", "brawler-0"), brawler)  # brawler's adapter moved
        assert torch.equal(svc.engine.adapter_row("duelist", "turtle-0"), row)  # turtle's did not, to the bit
        np.testing.assert_allclose(svc.action_probs("duelist", ["turtle-0"] * 16, obs), before, rtol=1e-5, atol=1e-7)


def test_the_trainer_process_serves_the_same_prior_rows_as_in_process(tmp_path):
    rows = {}
    for child in (False, True):
        with npcadapt.open(tmp_path / str(child), record=False, seed=0, trainer_process=child) as svc:
            _play(svc, {"brawler": 1, "low_sweeper": 1}, episodes=3)
            rows[child] = torch.stack([svc.engine.adapter_row("duelist", p) for p in ("brawler-0", "low_sweeper-0")])
    assert torch.equal(rows[False], rows[True])


def test_a_stale_or_damaged_prior_is_refused_with_a_warning_and_ppo_adapts_instead(tmp_path, caplog):
    root = tmp_path / "archetypes"
    shutil.copytree(BUILTIN_DIR / "duelist", root / "duelist")
    svc = npcadapt.open(tmp_path / "fresh", record=False, archetype_dirs=[root])
    library = svc.libraries["duelist"]
    arch = svc.archetypes["duelist"]
    svc.close()
    from dataclasses import replace

    save_library(replace(library, base_hash="0" * 16), root / "duelist" / LIBRARY_NAME)  # built on another base
    with caplog.at_level(logging.WARNING):
        assert find_library(arch) is None
    assert "train library" in caplog.text
    with npcadapt.open(tmp_path / "stale", record=False, archetype_dirs=[root]) as svc:
        assert "duelist" not in svc.libraries and svc.prior_info("duelist", "p") is None
    (root / "duelist" / LIBRARY_NAME).write_bytes(b"\x00" * 40)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert find_library(arch) is None
    assert "cannot be read" in caplog.text
    with pytest.raises(StoreError, match="cannot be read"):
        load_library(root / "duelist" / LIBRARY_NAME, arch)


@pytest.mark.parametrize(
    "setting",
    [
        "prior_decay=0",
        "prior_decay=1.5",
        "prior_trust_nats=1",
        "prior_evidence_cap=0",
        "prior_new_cohort=1",
        "prior_change_nats=0",
        "prior_forget=never",
        "prior_surprise_nats=-1",
        "prior_explore_spread=-0.5",
        "prior_explore_spread=inf",
        "prior_trust_null=population",
        "prior_t_open=nan",
        "prior_t_full=inf",
    ],
)
def test_invalid_prior_settings_are_refused(setting):
    from npcadapt.errors import InvalidInputError

    field = setting.partition("=")[0]
    with pytest.raises(InvalidInputError, match=rf"^OnlineConfig\.{field} must be .*, got "):
        OnlineConfig().with_settings([setting])


def test_prior_info_over_the_bridge_with_the_trainer_child(tmp_path):
    """A game client sees the same prior info the Service keeps, with training in the child process."""
    from bridge_helpers import RunningBridge

    from npcadapt.client import Client
    from npcadapt.errors import RemoteError

    with RunningBridge(tmp_path / "data", record=False, trainer_process=True) as server, Client(port=server.port) as c:
        assert c.prior_info("duelist", "ann") == {**server.service.prior_info("duelist", "ann")}
        assert c.prior_info("duelist", "ann")["episodes"] == 0
        obs = np.zeros(8, np.float32)
        for episode in range(1, 4):
            for step in range(5):
                c.act("duelist", "ann", "n", obs)
                c.feedback("ann", "n", 1.0, step == 4)
            deadline = time.monotonic() + 60  # the bridge trains in the background, in the child
            while (c.adapter_info("duelist", "ann") or {}).get("version", 0) < episode:
                assert time.monotonic() < deadline, "no update within 60 s"
                time.sleep(0.05)
        info = c.prior_info("duelist", "ann")
        assert info["episodes"] == 3 and info["cohorts"] == 10
        assert info["decisions"] == pytest.approx(5 * 3, abs=0.01)  # 3 episodes, none surprising: none faded
        assert c.adapter_info("duelist", "ann")["version"] == 3
        with pytest.raises(RemoteError, match="unknown archetype"):
            c.prior_info("wizard", "ann")


def test_a_player_known_from_another_archetype_starts_warm(tmp_path):
    """Players who duelled first start the merchant from their duel posterior (shipped transfer
    matrices) and are served better after one episode than fresh players of the same traits."""
    from npcadapt.simulation import trait_counts, trait_players

    merchant = "npcadapt/Merchant-v0"
    with npcadapt.open(tmp_path, record=False, seed=0) as svc:
        run_simulation(
            svc,
            DUEL,
            "duelist",
            players=0,
            episodes=12,
            seed=5,
            persona_counts=trait_counts(DUEL, 1),
            player_ids=trait_players(DUEL, 1, "warm"),
        )
        gains = {}
        for kind in ("warm", "fresh"):
            report = run_simulation(
                svc,
                merchant,
                "merchant",
                players=0,
                episodes=2,
                seed=6,
                persona_counts=trait_counts(merchant, 1),
                player_ids=trait_players(merchant, 1, kind),
            )
            gains[kind] = np.mean([p["gain_curve"][0] for p in report["personas"].values()])
        assert svc.prior_info("merchant", "warm-brute-0")["warm_from"] == ["duelist"]
        assert svc.prior_info("merchant", "fresh-brute-0")["warm_from"] == []
    assert gains["warm"] > gains["fresh"] + 0.2, gains


def _duelist_trainer(library=None, config: OnlineConfig = OnlineConfig()):
    """A PriorTrainer on the shipped duelist and its prior (or `library`), and its layout."""
    from npcadapt.archetypes import find_archetypes
    from npcadapt.lora.bank import AdapterLayout
    from npcadapt.prior.trainer import PriorTrainer

    arch = find_archetypes([BUILTIN_DIR])["duelist"]
    layout = AdapterLayout.from_spec(arch.spec)
    library = library or load_library(BUILTIN_DIR / "duelist" / LIBRARY_NAME, arch)
    return PriorTrainer(arch.policy, layout, library, config), layout


def _bouts_in_one_situation(seed: int, n: int, pays) -> list:
    """n duel bouts of 12 random moves paid by `pays` (action -> reward), all in one situation,
    so that a steady style earns full trust within a few bouts."""
    from test_online_parts import episodes

    spot = np.random.default_rng(0).standard_normal(8).astype(np.float32)
    out = episodes("p", [12] * n, seed, pays=pays)
    for ep in out:
        ep.obs = [spot] * len(ep.obs)
    return out


@pytest.mark.parametrize("after_suspect,changes", [(1.0, 0), (-1.0, 1), (0.0, 0)], ids=["usual", "new", "neither"])
def test_a_suspected_change_is_confirmed_only_by_an_episode_that_the_suspect_predicts(after_suspect, changes):
    """prior_change_confirm: one bout of another style is a suspect, not a change; the next
    bout confirms it only if it is in the new style too (a steady player's odd bout costs
    them their history otherwise). A bout of neither style (nothing pays), which the suspect
    predicts better than the history but worse than the population alone, confirms nothing."""
    from npcadapt.lora.layout import fresh_row
    from npcadapt.training.online import PlayerUpdate

    def style(sign: float, seed: int, n: int = 1) -> list:  # moves 0-3 pay `sign`, moves 4-7 pay -`sign`
        return _bouts_in_one_situation(seed, n, lambda action: sign * (1.0 if action < 4 else -1.0))

    trainer, layout = _duelist_trainer()
    state, params = None, fresh_row(layout, "duelist", "p")

    def play(episodes):
        nonlocal state, params
        out = trainer.update([PlayerUpdate("p", params, episodes, state)])[0]
        state, params = out.state, out.params
        return state

    for ep in style(1.0, seed=1, n=10):  # a steady style: moves 0-3 pay
        play([ep])
    steady = state.stats.n.sum()
    assert state.share == 1.0  # a trusted history
    suspected = play(style(-1.0, seed=2))  # one bout where moves 4-7 pay
    assert suspected.suspect is not None and suspected.changes == 0  # suspected, not yet acted on
    assert suspected.stats.n.sum() > steady  # the history is kept meanwhile
    after = play(style(after_suspect, seed=3))
    assert after.changes == changes and after.suspect is None
    if changes:  # the player starts again from the suspect bout and this one
        assert after.stats.n.sum() == pytest.approx(24)
    else:  # the whole history stays
        assert after.stats.n.sum() > steady


def test_the_measured_trust_test_divides_out_the_librarys_widening_and_nothing_else():
    """On a library that records no widening (1), "measured" and "widened" give the same trust
    and the same rows bit for bit (the same statistics reach both comparisons); on the shipped
    prior (widened 50x) the trust differs. (Narrowing the broad cohort too fails the haggler test.)"""
    from npcadapt.lora.layout import fresh_row
    from npcadapt.training.online import PlayerUpdate

    shipped = _duelist_trainer()[0].library
    bouts = _bouts_in_one_situation(4, 6, lambda action: 1.0 if action < 4 else -1.0)

    def trust_and_rows(library, null: str) -> tuple[list[float], list[torch.Tensor]]:
        settings = OnlineConfig(prior_trust_null=null, prior_explore_spread=0.0, prior_episode_nats=100.0)  # unclipped
        trainer, layout = _duelist_trainer(library, settings)
        state, params, trust, rows = None, fresh_row(layout, "duelist", "p"), [], []
        for ep in bouts:
            out = trainer.update([PlayerUpdate("p", params, [ep], state)])[0]
            state, params = out.state, out.params
            trust.append(state.evidence)
            rows.append(params)
        return trust, rows

    unwidened = replace(shipped, meta={}, member_spread=None)
    measured, widened = trust_and_rows(unwidened, "measured"), trust_and_rows(unwidened, "widened")
    assert measured[0] == widened[0] and all(torch.equal(a, b) for a, b in zip(measured[1], widened[1]))
    assert trust_and_rows(shipped, "measured")[0] != trust_and_rows(shipped, "widened")[0]
    assert trust_and_rows(shipped, "measured")[0] != trust_and_rows(replace(shipped, member_spread=None), "measured")[0]


def test_the_trust_test_predicts_a_new_player_as_one_more_member_of_a_cohort():
    """ "measured": each cohort's covariance is its served one less the widening, plus the spread
    of its recorded players around it; the broad cohort, and "widened", keep the served ones."""
    from npcadapt.prior.trainer import with_new_cohort
    from npcadapt.prior.trust import trust_covariances

    library = _duelist_trainer()[0].library
    assert library.member_spread is not None and library.widening == 50.0  # the shipped prior has both
    cov = with_new_cohort(library, 0.2)[1]  # (K + 1, A, d, d) as served
    measured = trust_covariances(library, cov, "measured")
    assert torch.allclose(measured[:-1], cov[:-1] / 50.0 + library.member_spread, rtol=0, atol=1e-15)
    assert torch.equal(measured[-1], cov[-1]) and torch.equal(trust_covariances(library, cov, "widened"), cov)
    pooled_only = trust_covariances(replace(library, member_spread=None), cov, "measured")
    assert torch.equal(pooled_only[:-1], cov[:-1] / 50.0)  # a library written before the spread was stored


def test_the_duelist_explores_within_its_cohort_and_a_setting_overrides_the_library():
    """The shipped duelist library sets explore_spread: its served model is drawn around the cohort
    posterior's mean (the same draw for the same player and episode count); the server's
    prior_explore_spread overrides the library's, 0 serving the mean itself."""
    from npcadapt.archetypes import find_archetypes
    from npcadapt.lora.layout import fresh_row
    from npcadapt.training.online import PlayerUpdate

    library = _duelist_trainer()[0].library
    assert library.explore_spread == 0.75
    merchant = find_archetypes([BUILTIN_DIR])["merchant"]
    assert load_library(BUILTIN_DIR / "merchant" / LIBRARY_NAME, merchant).explore_spread == 0.0  # built with 0
    bouts = _bouts_in_one_situation(7, 12, lambda action: 1.0 if action < 4 else -1.0)

    def served(lib, config):
        (trainer, layout), state, rows = _duelist_trainer(lib, config), None, []
        params = fresh_row(layout, "duelist", "p")
        for ep in bouts:
            out = trainer.update([PlayerUpdate("p", params, [ep], state)])[0]
            state, params = out.state, out.params
            rows.append(params)
        assert state.share == 1.0  # the tilt is served whole: the rows differ only by the draw
        return torch.stack(rows)  # (episodes, P)

    drawn = served(library, OnlineConfig())
    assert torch.equal(drawn, served(library, OnlineConfig()))  # reproducible
    mean = served(replace(library, explore_spread=0.0), OnlineConfig())
    assert torch.equal(served(library, OnlineConfig(prior_explore_spread=0.0)), mean)  # the setting wins
    gaps = (drawn - mean).norm(dim=1)  # (episodes,)
    assert float(gaps[1:].min()) > 0  # every served row after the first bout was drawn
    assert not torch.equal(served(library, OnlineConfig(prior_explore_spread=0.5)), drawn)  # the spread counts
    assert torch.equal(served(replace(library, explore_spread=0.0), OnlineConfig(prior_explore_spread=0.75)), drawn)


@pytest.mark.parametrize(
    "history,population,confirmed",
    [(-5, -5, True), (5, -5, False), (-5, 5, False), (5, 5, False)],
    ids=["beats-both", "history-better", "population-better", "both-better"],
)
def test_the_change_point_confirms_only_a_suspect_that_beats_the_history_and_the_population(
    history, population, confirmed
):
    """The rule itself, with the two rival predictions set around the suspect's own: a suspect
    episode confirms a change only if it predicts the new decisions better than both the
    player's history and the population alone (the scenario test above cannot produce the
    case where it beats the population but not the history)."""
    from test_online_parts import episodes

    from npcadapt.prior.library import decisions

    trainer, _ = _duelist_trainer()
    lib = trainer.library
    suspect_bout, new_bout = episodes("p", [12, 12], 5, pays=lambda action: 1.0 if action >= 4 else -1.0)
    suspect_rows = decisions(trainer.policy, [suspect_bout], lib.gamma)
    suspect = trainer._empty.add(lib.features(suspect_rows.hidden), suspect_rows.actions, suspect_rows.targets)
    state = replace(trainer.fresh_state(), suspect=suspect)
    rows = decisions(trainer.policy, [new_bout], lib.gamma)
    features = lib.features(rows.hidden)
    alone = trainer._posterior(trainer._empty, features, rows)
    since = trainer._posterior(suspect, features, rows)
    own = trainer._predicted(trainer.log_weights, suspect, since[1])  # log p(new | suspect episode, cohorts)
    restart, carried = trainer._change_point(
        state, False, alone, trainer.log_weights, features, rows, own + history, own + population
    )
    assert (restart is not None) == confirmed and carried is None
    if confirmed:  # the player starts again from the suspect episode and the new one
        assert float(restart[0].n.sum()) == 24


def test_the_trust_thresholds_come_from_the_library_unless_a_setting_overrides_them():
    """The shipped priors carry their trust test's t thresholds (0.5 to 3; the haggler 1 to 4,
    scripts/build_priors.py); OnlineConfig's prior_t_open / prior_t_full override them, so the
    same evidence serves a smaller share under a higher bar; a pair that leaves full at or below
    open is refused by name, whichever side set it."""
    from npcadapt.archetypes import find_archetypes
    from npcadapt.errors import InvalidInputError
    from npcadapt.lora.layout import fresh_row
    from npcadapt.training.online import PlayerUpdate

    library = _duelist_trainer()[0].library
    assert (library.trust_t_open, library.trust_t_full) == (0.5, 3.0)
    haggler = find_archetypes([BUILTIN_DIR])["haggler"]
    shipped = load_library(BUILTIN_DIR / "haggler" / LIBRARY_NAME, haggler)
    assert (shipped.trust_t_open, shipped.trust_t_full) == (1.0, 4.0)
    bouts = _bouts_in_one_situation(5, 4, lambda action: 1.0 if action < 4 else -1.0)

    def trust_and_share(config: OnlineConfig) -> tuple[float, float]:
        trainer, layout = _duelist_trainer(library, replace(config, prior_episode_nats=0.5))  # t stays on the ramps
        state, params = None, fresh_row(layout, "duelist", "p")
        for ep in bouts:
            out = trainer.update([PlayerUpdate("p", params, [ep], state)])[0]
            state, params = out.state, out.params
        return state.evidence, state.share

    t, share = trust_and_share(OnlineConfig())
    assert 1.0 < t < 3.0 and share == pytest.approx((t - 0.5) / 2.5)  # the library's ramp
    t_high, share_high = trust_and_share(OnlineConfig(prior_t_open=1.0, prior_t_full=4.0))
    assert t_high == t and share_high == pytest.approx(max(t - 1.0, 0.0) / 3.0) and share_high < share
    with pytest.raises(InvalidInputError, match=r"full 0.4 must be > open 0.5"):
        _duelist_trainer(library, OnlineConfig(prior_t_full=0.4))


@pytest.mark.parametrize("trainer_process", [False, True])
def test_a_trust_threshold_that_clashes_with_a_shipped_prior_is_refused_when_the_service_starts(
    tmp_path, trainer_process
):
    """prior_t_open 3.5 is valid alone but above the shipped priors' full (3): the Service
    refuses it at start, by name, in either trainer mode (not a trainer child that fails
    later and leaves every player unadapted), and the data directory opens again afterwards."""
    from npcadapt.errors import InvalidInputError

    clash = OnlineConfig(prior_t_open=3.5)
    with pytest.raises(InvalidInputError, match=r"full 3.0 must be > open 3.5"):
        npcadapt.open(tmp_path, online=clash, trainer_process=trainer_process)
    with npcadapt.open(tmp_path, online=OnlineConfig(prior_t_open=3.5, prior_t_full=5.0)) as svc:
        assert svc.prior_info("duelist", "p") is not None
