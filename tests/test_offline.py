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


def _record(data, players: int, episodes: int, seed: int):
    """`data`, its log holding `players` x `episodes` duels played by the frozen base (no adaptation)."""
    svc = npcadapt.open(data, seed=seed, online=None)
    run_simulation(svc, "npcadapt/Duel-v0", "duelist", players=players, episodes=episodes, seed=seed, train=False)
    svc.close()
    return data


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A data directory whose log holds sessions played by the frozen base (no adaptation)."""
    return _record(tmp_path_factory.mktemp("recorded"), PLAYERS, EPISODES, seed=0)


def _copy_logs(recorded, data):
    """A copy of the recorded log in `data`/logs (a test may write beside it): that path."""
    shutil.copytree(recorded / "logs", data / "logs")
    return data / "logs"


def _train_adapters(logs, *extra: str) -> int:
    """`npcadapt train adapters --quiet --logs LOGS... EXTRA...`: its exit code."""
    return main(["train", "adapters", "--quiet", "--logs", *map(str, logs), *extra])


def _inspect_adapter(data, *extra: str, player: str = "turtle-0") -> int:
    """`npcadapt inspect adapter` of `player` of the duelist in `data`: its exit code."""
    return main(["inspect", "adapter", "--archetype", "duelist", "--player", player, "--data", str(data), *extra])


def _duelist(tmp_path):
    """The built-in duelist archetype's runtime (of an engine closed at once)."""
    engine = npcadapt.Engine(tmp_path / "probe")
    try:
        return engine.runtime("duelist")
    finally:
        engine.close()


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
    logs = _copy_logs(recorded, data)
    assert _train_adapters([logs], "--epochs", "2", "--players", "turtle-0", "brawler-0") == 0
    report = json.loads((data / "reports" / "fit-duelist.json").read_text())
    assert report["players"] == 2 and {r["player"] for r in report["per_player"]} == {"turtle-0", "brawler-0"}
    assert (data / "reports" / "fit-duelist.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["inspect", "log", str(logs)]) == 0
    assert "duelist" in capsys.readouterr().out
    assert _inspect_adapter(data, "--logs", str(logs)) == 0
    out = capsys.readouterr().out
    assert "actor.0.lora_A" in out and "recorded observations" in out
    assert _inspect_adapter(data, player="nobody") == 1


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


# -- several servers' logs, adapters published through the Redis store ----------------------


@pytest.fixture(scope="module")
def second_server(recorded, tmp_path_factory):
    """The logs of a second server on which two of the recorded players played later."""
    return _record(tmp_path_factory.mktemp("second"), 2, 3, seed=1)


def _episode_bytes(ep) -> bytes:
    return np.stack(ep.obs).tobytes() + np.asarray(ep.action).tobytes()


def test_several_log_directories_merge_each_players_episodes_in_time_order(recorded, second_server):
    one, _ = read_episodes(recorded / "logs")
    two, _ = read_episodes(second_server / "logs")
    both, summary = read_episodes([recorded / "logs", second_server / "logs", recorded / "logs"])  # a repeat: once
    assert summary.episodes == sum(map(len, one.values())) + sum(map(len, two.values())) == PLAYERS * EPISODES + 6
    assert summary.players == PLAYERS and set(two) < set(one)
    for key, eps in both.items():  # the second server's episodes ended later: after the first's
        expected = one[key] + two.get(key, [])
        assert [_episode_bytes(e) for e in eps] == [_episode_bytes(e) for e in expected]
    swapped, _ = read_episodes([second_server / "logs", recorded / "logs"])  # the order given does not matter
    assert all([_episode_bytes(e) for e in swapped[k]] == [_episode_bytes(e) for e in both[k]] for k in both)


def _train_to_redis(tmp_path, recorded, second_server, url, *extra):
    return _train_adapters(
        [recorded / "logs", second_server / "logs"],
        *("--data", str(tmp_path / "fit"), "--store", url, "--epochs", "2", *extra),
    )


def test_train_adapters_from_two_servers_logs_publishes_to_redis(tmp_path, recorded, second_server, redis_url, capsys):
    from npcadapt.store_redis import RedisAdapterStore

    two = sorted({p for _, p in read_episodes(second_server / "logs")[0]})
    assert _train_to_redis(tmp_path, recorded, second_server, redis_url, "--players", *two) == 0
    out = capsys.readouterr().out
    assert "from 2 log directories" in out and "0 skipped: newer online version" in out
    store = RedisAdapterStore(redis_url)
    try:
        assert sorted(store.players("duelist")) == two
        assert all(store.read_meta("duelist", p).version == 1 for p in two)
        report = json.loads((tmp_path / "fit" / "reports" / "fit-duelist.json").read_text())
        assert {r["player"]: r["episodes"] for r in report["per_player"]} == dict.fromkeys(two, EPISODES + 3)
        assert not list((tmp_path / "fit").glob("adapters/duelist/*/*.safetensors"))  # in Redis, not in files
        # a second run refines the stored versions: each is stored as the version after the one it read
        assert _train_to_redis(tmp_path / "again", recorded, second_server, redis_url, "--players", *two) == 0
        assert all(store.read_meta("duelist", p).version == 2 for p in two)
    finally:
        store.close()


def test_an_online_update_landing_during_the_fit_is_not_overwritten(
    tmp_path, recorded, second_server, redis_url, capsys, monkeypatch
):
    """Player A is updated online (another server writes version 2) while the offline fit
    that read version 1 runs: the offline result is refused by compare-and-set, reported as
    skipped, and A keeps the online version; player B, not updated meanwhile, gets the fit."""
    from dataclasses import replace

    from npcadapt.store_redis import RedisAdapterStore
    from npcadapt.training import offline

    a, b = sorted({p for _, p in read_episodes(second_server / "logs")[0]})
    assert _train_to_redis(tmp_path / "first", recorded, second_server, redis_url, "--players", a, b) == 0
    online = RedisAdapterStore(redis_url)  # another server's store
    fit_batch = offline.fit_batch

    def online_update_lands_first(trainer, start, episodes, config):
        got = online.load(online_spec, a)
        assert got is not None and got[1].version == 1  # the fit started from version 1
        tensors = {k: v + 0.01 for k, v in got[0].items()}
        online.save(tensors, replace(got[1], version=2, updates=got[1].updates + 1))
        landed.append(tensors)
        return fit_batch(trainer, start, episodes, config)

    online_spec = _duelist(tmp_path).adapter_spec
    landed: list = []
    monkeypatch.setattr(offline, "fit_batch", online_update_lands_first)
    capsys.readouterr()
    try:
        assert _train_to_redis(tmp_path / "second", recorded, second_server, redis_url, "--players", a, b) == 0
        assert "1 skipped: newer online version" in capsys.readouterr().out
        tensors, meta = online.load(online_spec, a)
        assert meta.version == 2 and all(torch.equal(tensors[k], landed[0][k]) for k in tensors)  # kept
        assert online.read_meta("duelist", b).version == 2  # refined by the fit
        report = json.loads((tmp_path / "second" / "fit" / "reports" / "fit-duelist.json").read_text())
        skipped = {r["player"]: r.get("skipped") for r in report["per_player"]}
        assert skipped == {a: "newer online version", b: None}
        state = json.loads((tmp_path / "second" / "fit" / ".fit-duelist.state.json").read_text())
        assert sorted(state["players"]) == [b]  # a rerun fits a again, from the online version
    finally:
        online.close()


def test_refresh_base_from_logs_makes_old_adapters_stale(tmp_path, recorded, capsys):
    arch_dir = tmp_path / "archetypes"
    shutil.copytree(_duelist(tmp_path).archetype.directory, arch_dir / "duelist")
    data = tmp_path / "data"
    logs = _copy_logs(recorded, data)
    assert _train_adapters([logs], "--epochs", "1", "--players", "turtle-0", "--archetypes", str(arch_dir)) == 0
    old = npcadapt.Engine(tmp_path / "x", archetype_dirs=[arch_dir]).runtime("duelist").archetype.base_hash
    assert main(["train", "base", "--archetype", "duelist", "--archetypes", str(arch_dir), "--logs", str(logs)]) == 0
    result = json.loads((arch_dir / "duelist" / "train_result.json").read_text())
    assert result["previous_base_hash"] == old != result["base_hash"]
    assert result["episodes_kept"] >= result["episodes"] // 2 and result["kept_mean_return"] > result["all_mean_return"]
    assert result["greedy_agreement_with_kept_actions"] > 0.3
    eng = npcadapt.Engine(data, archetype_dirs=[arch_dir])
    assert eng.runtime("duelist").archetype.base_hash == result["base_hash"]
    assert eng.act("duelist", "turtle-0", np.zeros(8, np.float32)).adapter_version == 0  # old adapter not applied
    assert eng.counters["stale_adapters"] == 1 and eng.store.path_for("duelist", "turtle-0").exists()
    capsys.readouterr()
    assert _inspect_adapter(data, "--archetypes", str(arch_dir)) == 1
    assert "STALE" in capsys.readouterr().out
