"""The simulation loop, its report and the sim / bench CLI commands, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

import npcadapt
from npcadapt.cli import main
from npcadapt.envs import make as make_env
from npcadapt.log import read_records
from npcadapt.simulation import run_simulation

ADAPT_REPORT_KEYS = {
    "checkpoints",
    "gain_at",
    "baselines",
    "heldout_gain_at",
    "switch_recovery_episodes",
    "play_return_vs_base",
    "noise_kl",
    "lora_vs_full",
    "mean_gain",
    "seconds",
}  # what every `bench adapt` report holds


@pytest.fixture(scope="module")
def duel_report(tmp_path_factory):
    svc = npcadapt.open(tmp_path_factory.mktemp("sim"), seed=0, record=False)
    report = run_simulation(svc, "npcadapt/Duel-v0", "duelist", players=10, episodes=40, seed=0)
    svc.close()
    return report


def test_named_personas_gain_and_noise_stays_bounded(duel_report):
    personas = duel_report["personas"]
    assert set(personas) >= {"brawler", "high_blocker", "average", "noise"}
    assert duel_report["mean_gain"] > 0.3  # 40 episodes already close a good part of the gap
    for name, p in personas.items():
        assert p["base_return"] <= p["oracle_return"] + 1e-6
        assert p["kl_to_base"] <= npcadapt.OnlineConfig().kl_bound + 0.25  # bound holds per update's states
        if name not in ("average", "noise"):
            assert p["adapted_return"] > p["base_return"]


def test_curves_start_at_base_and_are_per_episode(duel_report):
    p = duel_report["personas"]["brawler"]
    assert len(p["curve"]) == 40 and len(p["realised"]) == 40
    assert p["curve"][-1] == pytest.approx(p["adapted_return"], abs=1e-3)
    for persona in duel_report["personas"].values():
        assert persona["curve"][0] == pytest.approx(persona["base_return"], abs=1e-6)


def test_same_seed_same_report(tmp_path):
    reports = []
    for i in range(2):
        svc = npcadapt.open(tmp_path / str(i), seed=3, record=False)
        reports.append(run_simulation(svc, "npcadapt/Merchant-v0", "merchant", players=4, episodes=8, seed=3))
        svc.close()
    assert reports[0]["personas"] == reports[1]["personas"]


def test_sim_command_writes_report_plot_and_recording(tmp_path, capsys):
    out, data = tmp_path / "out", tmp_path / "data"
    rc = main(
        [
            "sim",
            "--env",
            "npcadapt/Companion-v0",
            "--players",
            "10",
            "--episodes",
            "8",
            "--data",
            str(data),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "potion_lover" in text and "mean gain" in text
    assert "medic_fan" in text and "held-out personas" in text and "switch potion_lover>tank" in text
    report = json.loads((out / "report.json").read_text())
    assert report["archetype"] == "companion" and report["stats"]["updates"] > 0
    png = (out / "returns.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    records = list(read_records(data / "logs"))
    decisions = sum(len(r["players"]) for r in records if r["t"] == "decisions")
    assert decisions == (10 + 2 * 2 + 2 * 2) * 8 * 12  # 2 per held-out persona and per switch pair by default
    assert list((data / "adapters" / "companion").rglob("*.safetensors"))


def test_sim_without_adaptation_stays_at_base(tmp_path, capsys):
    rc = main(
        [
            "sim",
            "--players",
            "10",
            "--episodes",
            "4",
            "--no-adapt",
            "--no-record",
            "--switch-players",
            "0",
            "--data",
            str(tmp_path / "d"),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    assert rc == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    for p in report["personas"].values():
        assert p["adapted_return"] == pytest.approx(p["base_return"], abs=1e-3)


def test_bench_adapt_reports_lora_and_full_finetune(tmp_path):
    from npcadapt.bench.adapt import run
    from npcadapt.training.online import OnlineConfig

    # without the validation gate so that 8 episodes already move the served policies
    result = run(
        "npcadapt/Duel-v0",
        players_per_persona=1,
        episodes=8,
        seed=0,
        control_players=2,
        heldout_players=1,
        switch_players=1,
        switch_at=4,
        config=OnlineConfig(validation_gate=False),
        out=tmp_path,
    )
    # 1 per named persona, 2 average, 2 noise, 1 per held-out persona, 1 per switch pair
    assert result["players"] == 8 + 2 + 2 + 2 + 2
    assert set(result) >= ADAPT_REPORT_KEYS
    assert result["checkpoints"] == [5, 8]
    assert set(result["gain_at"]) == set(result["heldout_gain_at"]) == {"5", "8"}
    assert result["gain_at"]["8"] == result["mean_gain"]
    assert set(result["switch_recovery_episodes"]) == {"brawler>turtle", "high_blocker>low_sweeper"}
    assert set(result["play_return_vs_base"]) == {"average", "noise"}
    assert set(result["baselines"]) == {"table_thompson", "neural_linear_thompson"}
    for baseline in result["baselines"].values():
        assert set(baseline["gain_at"]) == {"5", "8"} and baseline["gain_at"]["8"] > 0.2  # they learn this fast
    assert result["best_baseline_gain_at"]["8"] == max(b["gain_at"]["8"] for b in result["baselines"].values())
    cross = result["cross_archetype"]  # players who met the skirmisher first, against fresh ones
    assert cross["source"] == "npcadapt/Skirmish-v0" and result["cross_archetype_gain_at_5"] == cross["gain_at_5"]
    assert cross["gain_at_5"] == pytest.approx(cross["warm_gain_at"]["5"] - cross["fresh_gain_at"]["5"], abs=1e-4)
    assert (
        cross["fresh_gain_at"]["1"] == 0.0 < cross["warm_gain_at"]["1"]
    )  # a fresh player's first update serves the base
    assert 0 < result["adapter_param_fraction"] < 0.5
    p = result["personas"]["turtle"]
    assert set(p) >= {"base_return", "adapted_return", "oracle_return", "full_ft_return", "gain", "kl_to_base"}
    assert np.isfinite(p["full_ft_return"]) and p["full_ft_return"] != p["base_return"]
    png = (tmp_path / "adapt-Duel-v0.png").read_bytes()
    assert result["plot"] == str(tmp_path / "adapt-Duel-v0.png") and png[:4] == b"\x89PNG" and len(png) > 10_000


def test_bench_inference_prints_one_json_line(capsys):
    rc = main(["bench", "inference", "--rows", "64", "--resident", "256", "--repeats", "3", "--memory-players", "1000"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in ("decisions_per_s", "ratio_vs_base", "speedup_vs_loop", "floor_ratio", "bf16_decisions_per_s"):
        assert result[key] > 0
    assert result["bf16_greedy_agreement"] > 0.9


def test_train_base_command_on_a_user_archetype(tmp_path, capsys):
    assert (
        main(
            [
                "archetype",
                "init",
                "pole",
                "--obs",
                "state:4",
                "--actions",
                "left,right",
                "--dir",
                str(tmp_path),
                "--hidden",
                "16,16",
            ]
        )
        == 0
    )
    rc = main(
        [
            "train",
            "base",
            "--archetype",
            "pole",
            "--archetypes",
            str(tmp_path),
            "--env",
            "CartPole-v1",
            "--steps",
            "4096",
            "--quiet",
        ]
    )
    assert rc == 0
    assert "new version" in capsys.readouterr().out
    assert (tmp_path / "pole" / "train_result.json").is_file()


def test_cli_errors_are_clear(capsys):
    assert main(["archetype", "show", "nope"]) == 2
    assert "unknown archetype" in capsys.readouterr().err


def test_sim_gate_holds_the_base_until_there_is_evidence_and_no_gate_serves_at_once(tmp_path, capsys):
    """The PPO trainer's gate (archetypes without a population prior; --no-prior forces it)."""

    def returns(*flags):
        out = tmp_path / "-".join(flags or ("gated",))
        rc = main(
            [
                "sim",
                "--players",
                "10",
                "--episodes",
                "8",
                "--no-record",
                "--data",
                str(out / "d"),
                "--no-prior",
                "--out",
                str(out),
                "--quiet",
                "--heldout-players",
                "0",
                "--switch-players",
                "0",
                *flags,
            ]
        )
        assert rc == 0
        return json.loads((out / "report.json").read_text())["personas"]

    gated, ungated = returns(), returns("--no-gate")
    # 8 episodes = 2 updates; the first trains from nothing, the second holds 4 episodes of evidence (< 8)
    assert all(p["adapted_return"] == pytest.approx(p["base_return"], abs=1e-6) for p in gated.values())
    assert any(abs(p["adapted_return"] - p["base_return"]) > 1e-3 for p in ungated.values())


def test_online_settings_parse_by_field_type_and_name_what_is_wrong():
    config = npcadapt.OnlineConfig().with_settings(
        ["epochs=8", "validation_gate=false", "kl-bound=2.5", "adam_betas=0.8,0.99"]
    )
    assert (config.epochs, config.validation_gate, config.kl_bound, config.adam_betas) == (8, False, 2.5, (0.8, 0.99))
    spread = npcadapt.OnlineConfig().with_settings(["prior_explore_spread=0.5"])
    assert spread.prior_explore_spread == 0.5  # an optional number: "none" gives it back to the library
    assert spread.with_settings(["prior_explore_spread=none"]).prior_explore_spread is None
    with pytest.raises(ValueError, match=r"'epoch=3'.*epochs"):
        npcadapt.OnlineConfig().with_settings(["epoch=3"])
    with pytest.raises(ValueError, match="'validation_gate=maybe'"):
        npcadapt.OnlineConfig().with_settings(["validation_gate=maybe"])


def test_bench_adapt_lora_only_with_settings(tmp_path, capsys):
    rc = main(
        [
            "bench",
            "adapt",
            "--episodes",
            "8",
            "--players-per-persona",
            "1",
            "--lora-only",
            "--no-baselines",
            "--set",
            "validation_gate=false",
            "--set",
            "epochs=2",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["full_ft_mean_gain"] is None and result["lora_vs_full"] is None and result["baselines"] == {}
    assert result["config"]["epochs"] == 2 and result["config"]["validation_gate"] is False
    assert result["config"]["prior_t_open"] is None  # the prior's own, which the report resolves:
    assert result["prior"] == {  # the shipped duelist prior (scripts/build_priors.py)
        "cohorts": 10,
        "trust_t": [0.5, 3.0],
        "trust_null": "measured",
        "member_spread": True,
        "widening": 50.0,
        "explore_spread": 0.75,
    }
    assert result["mean_gain"] != 0  # ungated, 8 episodes already move the named players
    assert main(["bench", "adapt", "--set", "nope=1"]) == 2
    assert "nope=1" in capsys.readouterr().err


def test_inconsistent_gate_settings_are_refused():
    with pytest.raises(ValueError, match="gate_t_full"):
        npcadapt.OnlineConfig(gate_t_open=2.0, gate_t_full=1.0)
    with pytest.raises(ValueError, match="ent_coef"):
        npcadapt.OnlineConfig(ent_coef=-0.1)


def test_heldout_and_switching_players_are_reported_separately(tmp_path):
    svc = npcadapt.open(tmp_path, seed=0, record=False)
    report = run_simulation(
        svc,
        "npcadapt/Duel-v0",
        "duelist",
        players=10,
        episodes=8,
        seed=0,
        train=False,
        heldout_players=1,
        switch_players=2,
        switch_at=3,
    )
    svc.close()
    personas = report["personas"]
    kinds = {name: p["kind"] for name, p in personas.items()}
    assert kinds["sweep_and_hop"] == kinds["guard_breaker"] == "heldout"
    assert kinds["brawler>turtle"] == kinds["high_blocker>low_sweeper"] == "switch"
    assert kinds["average"] == kinds["noise"] == "control" and kinds["brawler"] == "named"
    assert personas["brawler>turtle"]["players"] == 2 and report["players"] == 10 + 2 + 4
    # base only: the switching player's curve is the base against brawler, then against turtle from episode 3 on
    before = make_env("npcadapt/Duel-v0").unwrapped
    probs = svc_free_base_probs(before)
    curve = personas["brawler>turtle"]["curve"]
    assert curve[:3] == pytest.approx([before.expected_return("brawler", probs)] * 3, abs=1e-3)
    assert curve[3:] == pytest.approx([before.expected_return("turtle", probs)] * 5, abs=1e-3)
    assert personas["brawler>turtle"]["gain_curve"] == pytest.approx([0.0] * 8, abs=1e-6)
    assert report["switch_recovery_episodes"] == {"brawler>turtle": None, "high_blocker>low_sweeper": None}
    assert report["heldout_gain"] == pytest.approx(0.0, abs=1e-6)
    assert set(report["play_return_vs_base"]) == {"average", "noise"}


def svc_free_base_probs(env) -> np.ndarray:
    """(S, A) the shipped duelist base's action probabilities on the env's situations."""
    import torch

    from npcadapt.archetypes import BUILTIN_DIR, find_archetypes

    policy = find_archetypes([BUILTIN_DIR])["duelist"].policy
    obs = torch.as_tensor(np.stack([o for o, _ in env.situations()]))
    with torch.inference_mode():
        return torch.softmax(policy.logits(obs), -1).double().numpy()


def test_recovery_counts_episodes_of_the_new_style_until_the_gain_is_back():
    from npcadapt.simulation import recovery_episodes

    assert recovery_episodes([0.9, 0.9, 0.1, 0.5, 0.85, 0.7], switch_at=2) == 3
    assert recovery_episodes([0.9, 0.9, 0.1, 0.5], switch_at=2) is None


@pytest.mark.parametrize("env_id", ["npcadapt/Skirmish-v0", "npcadapt/Haggle-v0"])
def test_bench_adapt_reports_every_key_on_the_continuous_and_sequential_envs(env_id, tmp_path):
    from npcadapt.bench.adapt import run

    result = run(
        env_id,
        players_per_persona=1,
        episodes=6,
        seed=0,
        control_players=1,
        heldout_players=1,
        switch_players=1,
        switch_at=3,
        full_finetune=False,
        cross_archetype=False,
        out=tmp_path,
    )
    assert set(result) >= ADAPT_REPORT_KEYS | {"plot"}
    assert result["checkpoints"] == [5, 6] and set(result["gain_at"]) == {"5", "6"}
    # a table needs discrete situations: Skirmish's are continuous, so only NeuralLinear runs there
    expected = {"neural_linear_thompson"} | ({"table_thompson"} if "Haggle" in env_id else set())
    assert set(result["baselines"]) == expected
    if "Haggle" in env_id:  # sequential: the baselines learn from the discounted reward still to come
        assert all(b["settings"]["gamma"] == 0.9 for b in result["baselines"].values())
    assert (tmp_path / f"adapt-{env_id.split('/')[1]}.png").is_file()
