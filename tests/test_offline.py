"""Offline training from recorded sessions: reading logs back, fitting, resuming, inspecting."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import npcadapt
from npcadapt.cli import main
from npcadapt.log import list_segments
from npcadapt.recordings import read_episodes
from npcadapt.simulation import run_simulation
from npcadapt.training.offline import OfflineConfig, fit_adapters, pdwis

PLAYERS = 10  # one per persona of the duel (8 named + average + noise)
EPISODES = 12


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A data directory whose log holds sessions played by the frozen base (no adaptation)."""
    data = tmp_path_factory.mktemp("recorded")
    svc = npcadapt.open(data, seed=0, online=None)
    run_simulation(svc, "npcadapt/Duel-v0", "duelist", players=PLAYERS, episodes=EPISODES, seed=0, train=False)
    svc.close()
    return data


def _fit(tmp_path, recorded, config=OfflineConfig(epochs=8), state=None, stop_after=None):
    episodes, _ = read_episodes(recorded / "logs")
    svc = npcadapt.open(tmp_path, seed=0, online=None, record=False)
    seen = []

    def progress(n):
        seen.append(n)
        if stop_after is not None and len(seen) >= stop_after:
            raise KeyboardInterrupt

    try:
        rows = fit_adapters(
            svc.engine,
            "duelist",
            {p: e for (_, p), e in episodes.items()},
            config,
            state_file=state,
            on_players=progress,
        )
        adapters = {r["player"]: svc.engine.adapter_row("duelist", r["player"]) for r in rows}
        return rows, adapters
    finally:
        svc.close()


def test_recordings_rebuild_every_episode(recorded):
    episodes, summary = read_episodes(recorded / "logs")
    assert summary.players == PLAYERS and summary.episodes == PLAYERS * EPISODES
    assert summary.decisions == summary.feedback == PLAYERS * EPISODES * 12
    ep = episodes[("duelist", "brawler-0")][0]
    assert len(ep) == 12 and ep.obs[0].shape == (8,) and all(lp <= 0 for lp in ep.logp)
    only = read_episodes(recorded / "logs", players=["turtle-0"])[0]
    assert list(only) == [("duelist", "turtle-0")]


def test_corrupt_records_are_skipped_and_counted(recorded, tmp_path):
    logs = tmp_path / "logs"
    shutil.copytree(recorded / "logs", logs)
    segment = list_segments(logs)[0]
    raw = bytearray(segment.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # a flipped byte in the middle
    segment.write_bytes(bytes(raw))
    _episodes, summary = read_episodes(logs)
    assert summary.corrupt_records == 1
    assert 0 < summary.episodes < PLAYERS * EPISODES


def test_fitting_improves_the_off_policy_estimate_within_the_kl_bound(tmp_path, recorded):
    rows, adapters = _fit(tmp_path, recorded)
    by_player = {r["player"]: r for r in rows}
    named = [p for p in by_player if not p.startswith(("average", "noise"))]
    improved = [p for p in named if by_player[p]["estimate_fitted"] > by_player[p]["estimate_base"] + 0.5]
    assert len(improved) >= 6, by_player
    assert all(r["kl_to_base"] <= 3.0 + 1e-3 for r in rows)
    assert all(a is not None for a in adapters.values())


def test_same_seed_same_adapters_and_resume_after_interruption(tmp_path, recorded):
    config = OfflineConfig(epochs=4, players_per_batch=3)
    _, first = _fit(tmp_path / "a", recorded, config)
    _, second = _fit(tmp_path / "b", recorded, config)
    assert all(torch.equal(first[p], second[p]) for p in first)
    state = tmp_path / "c" / "state.json"
    (tmp_path / "c").mkdir()
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "c", recorded, config, state=state, stop_after=2)
    assert len(json.loads(state.read_text())["players"]) == 6
    rows, resumed = _fit(tmp_path / "c", recorded, config, state=state)
    assert len(rows) == PLAYERS
    for p in first:
        assert torch.allclose(first[p], resumed[p], atol=1e-6)


def test_pdwis_on_policy_equals_the_mean_return():
    from npcadapt.episodes import Episode

    eps = [
        Episode(
            "a",
            "p",
            "n",
            obs=[np.zeros(1)] * 2,
            mask=[None] * 2,
            action=[0, 1],
            logp=[-0.5, -1.0],
            value=[0, 0],
            reward=[r, 1.0],
            decision=[0, 0],
        )
        for r in (1.0, 3.0)
    ]
    assert pdwis(eps, [np.array(e.logp) for e in eps]) == pytest.approx(3.0)
    # a target that doubles the probability of the first episode's actions weights it more
    shifted = [np.array(eps[0].logp) + np.log(2), np.array(eps[1].logp)]
    assert pdwis(eps, shifted) < 3.0


def test_cli_train_adapters_and_inspect(tmp_path, recorded, capsys):
    data = tmp_path / "data"
    shutil.copytree(recorded / "logs", data / "logs")
    assert (
        main(
            [
                "train",
                "adapters",
                "--logs",
                str(data / "logs"),
                "--epochs",
                "2",
                "--players",
                "turtle-0",
                "brawler-0",
                "--quiet",
            ]
        )
        == 0
    )
    report = json.loads((data / "reports" / "fit-duelist.json").read_text())
    assert report["players"] == 2 and {r["player"] for r in report["per_player"]} == {"turtle-0", "brawler-0"}
    assert (data / "reports" / "fit-duelist.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["inspect", "log", str(data / "logs")]) == 0
    assert "duelist" in capsys.readouterr().out
    assert (
        main(
            [
                "inspect",
                "adapter",
                "--archetype",
                "duelist",
                "--player",
                "turtle-0",
                "--data",
                str(data),
                "--logs",
                str(data / "logs"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "actor.0.lora_A" in out and "recorded observations" in out
    assert main(["inspect", "adapter", "--archetype", "duelist", "--player", "nobody", "--data", str(data)]) == 1


def test_ray_engine_gives_the_same_adapters_as_local(tmp_path, recorded):
    pytest.importorskip("ray")
    from npcadapt.training.ray_backend import RayExecutor

    config = OfflineConfig(epochs=2, players_per_batch=3)
    _, local = _fit(tmp_path / "local", recorded, config)
    episodes, _ = read_episodes(recorded / "logs")
    svc = npcadapt.open(tmp_path / "ray", seed=0, online=None, record=False)
    executor = RayExecutor(svc.archetypes["duelist"].directory, config, workers=2)
    try:
        rows = fit_adapters(svc.engine, "duelist", {p: e for (_, p), e in episodes.items()}, config, executor=executor)
        assert len(rows) == PLAYERS
        for p, flat in local.items():
            assert torch.allclose(svc.engine.adapter_row("duelist", p), flat, atol=1e-6)
    finally:
        executor.shutdown()
        svc.close()


def test_refresh_base_from_logs_makes_old_adapters_stale(tmp_path, recorded, capsys):
    arch_dir = tmp_path / "archetypes"
    shutil.copytree(npcadapt.Engine(tmp_path / "probe").runtime("duelist").archetype.directory, arch_dir / "duelist")
    data = tmp_path / "data"
    shutil.copytree(recorded / "logs", data / "logs")
    assert (
        main(
            [
                "train",
                "adapters",
                "--logs",
                str(data / "logs"),
                "--epochs",
                "1",
                "--players",
                "turtle-0",
                "--archetypes",
                str(arch_dir),
                "--quiet",
            ]
        )
        == 0
    )
    old = npcadapt.Engine(tmp_path / "x", archetype_dirs=[arch_dir]).runtime("duelist").archetype.base_hash
    assert (
        main(["train", "base", "--archetype", "duelist", "--archetypes", str(arch_dir), "--logs", str(data / "logs")])
        == 0
    )
    result = json.loads((arch_dir / "duelist" / "train_result.json").read_text())
    assert result["previous_base_hash"] == old != result["base_hash"]
    assert result["episodes_kept"] >= result["episodes"] // 2 and result["kept_mean_return"] > result["all_mean_return"]
    assert result["greedy_agreement_with_kept_actions"] > 0.3
    eng = npcadapt.Engine(data, archetype_dirs=[arch_dir])
    assert eng.runtime("duelist").archetype.base_hash == result["base_hash"]
    assert eng.act("duelist", "turtle-0", np.zeros(8, np.float32)).adapter_version == 0  # old adapter not applied
    assert eng.counters["stale_adapters"] == 1 and eng.store.path_for("duelist", "turtle-0").exists()
    capsys.readouterr()
    assert (
        main(
            [
                "inspect",
                "adapter",
                "--archetype",
                "duelist",
                "--player",
                "turtle-0",
                "--data",
                str(data),
                "--archetypes",
                str(arch_dir),
            ]
        )
        == 1
    )
    assert "STALE" in capsys.readouterr().out
