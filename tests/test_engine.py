"""Batched mixed-adapter inference: parity with a per-player loop, masks, validation, persistence."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from conftest import random_adapter, torch_forward

from npcadapt.engine import Engine
from npcadapt.errors import InvalidInputError, NpcAdaptError, PlayerIdError
from npcadapt.lora.functional import lora_delta


def reference_logits(engine, archetype, player, obs):
    """Naive per-player forward: the base policy plus this player's adapter, layer by layer."""
    rt = engine.runtime(archetype)
    tensors = engine.get_adapter(archetype, player)

    def delta(name, x):
        if tensors is None or f"{name}.lora_A" not in tensors:
            return None
        return lora_delta(x, tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"], rt.layout.scale)

    with torch.no_grad():
        return rt.archetype.policy(torch.as_tensor(obs, dtype=torch.float32), delta)


def test_mixed_batch_matches_per_player_loop(engine):
    players = ["ann", "bob", "cid", "dee"]
    for i, p in enumerate(players[:3]):
        engine.set_adapter("tiny", p, random_adapter(engine, "tiny", p, seed=i))
    rng = np.random.default_rng(0)
    rows = [players[i % 4] for i in range(40)]  # interleaved; 'dee' has no adapter
    obs = rng.standard_normal((40, 6)).astype(np.float32)
    out = engine.act_batch("tiny", rows, obs)
    rt = engine.runtime("tiny")
    slots = rt.bank.lookup(rows)
    logits, value = torch_forward(engine, "tiny").forward(torch.from_numpy(obs), slots)
    for p in players:
        idx = [i for i, q in enumerate(rows) if q == p]
        want_logits, want_value = reference_logits(engine, "tiny", p, obs[idx])
        assert (logits[idx] - want_logits).abs().max() <= 1e-5
        assert (value[idx] - want_value).abs().max() <= 1e-5
        logp_all = torch.log_softmax(want_logits, -1)
        got_logp = torch.from_numpy(out.logp[idx])
        assert (got_logp - logp_all[torch.arange(len(idx)), torch.from_numpy(out.action[idx])]).abs().max() <= 1e-5
    assert set(out.adapter_version[[i for i, q in enumerate(rows) if q == "dee"]]) == {0}
    assert set(out.adapter_version[[i for i, q in enumerate(rows) if q == "ann"]]) == {1}


def test_adapters_really_change_behaviour_and_players_are_isolated(engine):
    obs = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    before_bob = reference_logits(engine, "tiny", "bob", obs)[0]
    engine.set_adapter("tiny", "ann", random_adapter(engine, "tiny", "ann", scale=1.0))
    ann = reference_logits(engine, "tiny", "ann", obs)[0]
    assert (ann - before_bob).abs().max() > 1e-2
    assert torch.equal(reference_logits(engine, "tiny", "bob", obs)[0], before_bob)


def test_fresh_adapter_and_unknown_player_get_base_exactly(engine):
    obs = np.random.default_rng(2).standard_normal((6, 6)).astype(np.float32)
    engine.set_adapter("tiny", "fresh", engine.new_adapter("tiny", "fresh"))
    engine.set_adapter("tiny", "other", random_adapter(engine, "tiny", "other"))
    rt = engine.runtime("tiny")
    base_logits, base_value = rt.policy(torch.from_numpy(obs))
    for rows in (["fresh"] * 6, ["nobody"] * 6, ["fresh", "other", "nobody"] * 2):
        logits, value = torch_forward(engine, "tiny").forward(torch.from_numpy(obs), rt.bank.lookup(rows))
        keep = [i for i, p in enumerate(rows) if p != "other"]
        assert torch.equal(logits[keep], base_logits[keep])
        assert torch.equal(value[keep], base_value[keep])


def test_masks_give_probability_zero_and_are_never_chosen(engine):
    engine.set_adapter("tiny", "ann", random_adapter(engine, "tiny", "ann", scale=2.0))
    n = 2000
    obs = np.zeros((n, 6), dtype=np.float32)
    mask = np.zeros((n, 4), dtype=bool)
    mask[:, 1] = True
    mask[::2, 3] = True
    out = engine.act_batch("tiny", ["ann", "bob"] * (n // 2), obs, masks=mask)
    assert mask[np.arange(n), out.action].all()
    assert set(out.action[1::2]) == {1}
    assert np.allclose(out.logp[1::2], 0.0) and np.allclose(out.entropy[1::2], 0.0)
    assert set(out.action[::2]) == {1, 3}
    single = engine.act("tiny", "ann", [0] * 6, mask=[False, False, True, False])
    assert single.action == 2 and single.action_name == "block"


def test_greedy_picks_argmax_and_sampling_is_seeded(tmp_path, arch_root):
    obs = np.random.default_rng(3).standard_normal((64, 6)).astype(np.float32)
    runs = []
    for _ in range(2):
        eng = Engine(tmp_path / "d", archetype_dirs=[arch_root], seed=7)
        runs.append(eng.act_batch("tiny", ["p"] * 64, obs).action)
        logits, _ = eng.runtime("tiny").policy(torch.from_numpy(obs))
        greedy = eng.act_batch("tiny", ["p"] * 64, obs, greedy=True)
        assert np.array_equal(greedy.action, logits.argmax(-1).numpy())
        eng.close()
    assert np.array_equal(runs[0], runs[1])


def test_result_fields(engine):
    out = engine.act_batch("tiny", ["a", "b", "c"], np.zeros((3, 6)))
    assert len(out) == 3 and out.decision.tolist() == sorted(set(out.decision.tolist()))
    d = out.row(1)
    assert d.action_name == ("wait", "attack", "block", "flee")[d.action]
    assert d.logp <= 0 and d.entropy > 0 and np.isfinite(d.value)
    assert set(d.to_dict()) >= {"decision", "action", "action_name", "logp", "value", "entropy"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(archetype="nope"), "unknown archetype"),
        (dict(obs=np.zeros((2, 5))), r"shape \(2, 6\)"),
        (dict(obs=np.full((2, 6), np.nan)), "NaN or infinite"),
        (dict(obs=np.array([[0, 0, 0, np.inf, 0, 0]] * 2)), "NaN or infinite"),
        (dict(obs=[["a"] * 6] * 2), "numbers"),
        (dict(masks=np.zeros((2, 4), dtype=bool)), "allow no action"),
        (dict(masks=np.ones((2, 3), dtype=bool)), r"shape \(2, 4\)"),
        (dict(masks=np.full((2, 4), 0.5)), "booleans"),
        (dict(players=["ok", ""]), "empty"),
        (dict(players=["ok", "x" * 300]), "bytes"),
        (dict(players=["ok", 5]), "str"),
        (dict(players="ab"), "sequence"),
        (dict(greedy=[True]), "greedy"),
    ],
)
def test_bad_input_names_the_problem_and_engine_keeps_serving(engine, kwargs, message):
    args = dict(archetype="tiny", players=["ok", "ok2"], obs=np.zeros((2, 6)))
    args.update(kwargs)
    with pytest.raises(InvalidInputError, match=message):
        engine.act_batch(args.pop("archetype"), args.pop("players"), args.pop("obs"), **args)
    assert len(engine.act_batch("tiny", ["ok"], np.zeros((1, 6)))) == 1


def test_hostile_player_ids_are_served(engine):
    ids = ["../x", "/etc/passwd", "a/b", "..", "a\x00b", "аdmin", "admin", "Bob", "bob"]
    out = engine.act_batch("tiny", ids, np.zeros((len(ids), 6)))
    assert len(out) == len(ids)
    for p in ids[:4]:
        engine.set_adapter("tiny", p, random_adapter(engine, "tiny", p))
    engine.flush()
    for p in ids[:4]:
        path = engine.store.path_for("tiny", p).resolve()
        assert path.is_file() and (engine.data_dir.resolve() / "adapters") in path.parents
    with pytest.raises(PlayerIdError):
        engine.act("tiny", "x" * 10_000, np.zeros(6))


def test_flush_persists_and_a_new_engine_serves_the_same_policy(tmp_path, arch_root):
    obs = np.random.default_rng(4).standard_normal((3, 6)).astype(np.float32)
    eng = Engine(tmp_path / "d", archetype_dirs=[arch_root])
    info = eng.set_adapter("tiny", "ann", random_adapter(eng, "tiny", "ann"), updates=3)
    assert info.version == 1 and info.updates == 3 and info.resident and not info.stored
    info = eng.set_adapter("tiny", "ann", random_adapter(eng, "tiny", "ann", seed=9), updates=2)
    assert info.version == 2 and info.updates == 5
    want = reference_logits(eng, "tiny", "ann", obs)[0]
    assert eng.flush() == 1 and eng.flush() == 0
    eng.close()
    with pytest.raises(NpcAdaptError, match="closed"):
        eng.act("tiny", "ann", obs[0])
    eng2 = Engine(tmp_path / "d", archetype_dirs=[arch_root])
    info = eng2.adapter_info("tiny", "ann")
    assert info.version == 2 and info.stored and not info.resident
    assert torch.allclose(reference_logits(eng2, "tiny", "ann", obs)[0], want, atol=0)
    assert eng2.act("tiny", "ann", obs[0]).adapter_version == 2
    assert eng2.reset_player("tiny", "ann") is True
    assert eng2.adapter_info("tiny", "ann") is None
    assert not eng2.store.path_for("tiny", "ann").exists()
    assert eng2.act("tiny", "ann", obs[0]).adapter_version == 0
    assert eng2.reset_player("tiny", "ann") is False


def test_lru_eviction_writes_back_and_reloads(tmp_path, arch_root):
    eng = Engine(tmp_path / "d", archetype_dirs=[arch_root], capacity=3)
    obs = np.random.default_rng(5).standard_normal((1, 6)).astype(np.float32)
    want = {}
    for i in range(6):
        p = f"p{i}"
        eng.set_adapter("tiny", p, random_adapter(eng, "tiny", p, seed=i))
        want[p] = reference_logits(eng, "tiny", p, obs)[0]
    bank = eng.runtime("tiny").bank
    assert len(bank) == 3 and bank.evictions >= 3
    assert {"p3", "p4", "p5"} == set(bank.resident_players())
    eng.writeback.flush()  # evicted ones were queued for the writer thread (it may have written some already) ...
    for i in range(6):  # ... which wrote them; the resident ones wait for a flush
        assert eng.store.path_for("tiny", f"p{i}").is_file() == (i < 3)
    eng.act_batch("tiny", ["p5"], obs)  # p5 most recent: p3 is now the LRU victim
    eng.act_batch("tiny", ["p0"], obs)  # reload p0 from disk, evicting p3
    assert "p3" not in bank and "p5" in bank and "p0" in bank
    for p in want:
        assert torch.allclose(reference_logits(eng, "tiny", p, obs)[0], want[p], atol=0)
    with pytest.raises(InvalidInputError, match="capacity"):
        eng.act_batch("tiny", [f"p{i}" for i in range(6)], np.zeros((6, 6)))
    eng.close()


def test_swap_is_atomic_under_concurrent_forwards(engine):
    obs = torch.from_numpy(np.random.default_rng(6).standard_normal((16, 6)).astype(np.float32))
    versions = [random_adapter(engine, "tiny", "ann", scale=1.0, seed=s) for s in (1, 2)]
    rt, forward = engine.runtime("tiny"), torch_forward(engine, "tiny")
    expected = []
    for v in versions:
        engine.set_adapter("tiny", "ann", v)
        expected.append(forward.forward(obs, rt.bank.lookup(["ann", "bob"] * 8))[0][::2])
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            engine.set_adapter("tiny", "ann", versions[i % 2])
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(300):
            got = forward.forward(obs, rt.bank.lookup(["ann", "bob"] * 8))[0][::2]
            assert any(torch.equal(got, e) for e in expected)
    finally:
        stop.set()
        thread.join()


def test_corrupt_adapter_file_is_quarantined_and_base_served(tmp_path, arch_root):
    eng = Engine(tmp_path / "d", archetype_dirs=[arch_root])
    eng.set_adapter("tiny", "ann", random_adapter(eng, "tiny", "ann"))
    eng.set_adapter("tiny", "bob", random_adapter(eng, "tiny", "bob", seed=1))
    eng.close()
    path = eng.store.path_for("tiny", "ann")
    path.write_bytes(path.read_bytes()[:50])
    bob_bytes = eng.store.path_for("tiny", "bob").read_bytes()
    eng2 = Engine(tmp_path / "d", archetype_dirs=[arch_root])
    out = eng2.act_batch("tiny", ["ann", "bob"], np.zeros((2, 6)))
    assert out.adapter_version.tolist() == [0, 1]
    assert eng2.counters["corrupt_adapters"] == 1
    assert not path.exists() and eng2.store.quarantined("tiny")
    assert eng2.store.path_for("tiny", "bob").read_bytes() == bob_bytes


def test_adapter_for_another_base_is_refused(tmp_path, arch_root):
    from npcadapt.archetypes import regenerate_weights

    eng = Engine(tmp_path / "d", archetype_dirs=[arch_root])
    eng.set_adapter("tiny", "ann", random_adapter(eng, "tiny", "ann"))
    eng.close()
    regenerate_weights(arch_root / "tiny", seed=99)
    eng2 = Engine(tmp_path / "d", archetype_dirs=[arch_root])
    assert eng2.act("tiny", "ann", np.zeros(6)).adapter_version == 0
    assert eng2.counters["stale_adapters"] == 1
    assert eng2.store.path_for("tiny", "ann").exists()  # kept, not destroyed


def test_bf16_bank_matches_fp32_closely(tmp_path, arch_root):
    obs = np.random.default_rng(7).standard_normal((32, 6)).astype(np.float32)
    outs = []
    for dtype in ("float32", "bfloat16"):
        eng = Engine(tmp_path / dtype, archetype_dirs=[arch_root], adapter_dtype=dtype)
        for i in range(4):
            eng.set_adapter("tiny", f"p{i}", random_adapter(eng, "tiny", f"p{i}", seed=i))
        rt = eng.runtime("tiny")
        outs.append(
            torch_forward(eng, "tiny").forward(torch.from_numpy(obs), rt.bank.lookup([f"p{i % 4}" for i in range(32)]))[
                0
            ]
        )
        eng.close()
    assert (outs[0] - outs[1]).abs().max() < 2e-2


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_numpy_forward_reads_the_banks_rows_in_every_dtype(tmp_path, arch_root, dtype):
    eng = Engine(tmp_path / dtype, archetype_dirs=[arch_root], adapter_dtype=dtype)
    for i in range(3):
        eng.set_adapter("tiny", f"p{i}", random_adapter(eng, "tiny", f"p{i}", seed=i))
    rt = eng.runtime("tiny")
    bank, forward = rt.bank, rt.forward
    assert forward.name == "numpy"
    slots = bank.lookup(["p2", "p0", "nobody", "p2"])
    rows = forward.read_rows(slots)
    assert rows.dtype == np.float32 and np.array_equal(rows, bank.gather(slots).float().numpy())
    one = forward.read_rows(slots[:1])
    eng.set_adapter("tiny", "p2", random_adapter(eng, "tiny", "p2", seed=9))  # the bank's memory changes
    assert np.array_equal(forward.read_rows(slots[:1]), bank.gather(slots[:1]).float().numpy())
    assert not np.array_equal(one, forward.read_rows(slots[:1]))  # what was read before is not rewritten
    eng.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(tmp_path, arch_root):
    obs = np.random.default_rng(8).standard_normal((8, 6)).astype(np.float32)
    res = []
    for device in ("cpu", "cuda"):
        eng = Engine(tmp_path / device, archetype_dirs=[arch_root], device=device)
        eng.set_adapter("tiny", "ann", random_adapter(eng, "tiny", "ann"))
        rt = eng.runtime("tiny")
        res.append(
            torch_forward(eng, "tiny")
            .forward(torch.from_numpy(obs).to(device), rt.bank.lookup(["ann", "bob"] * 4))[0]
            .cpu()
        )
    assert (res[0] - res[1]).abs().max() < 1e-4


def test_cuda_requested_without_device_is_a_clear_error(tmp_path, arch_root):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(InvalidInputError, match="cuda"):
        Engine(tmp_path / "d", archetype_dirs=[arch_root], device="cuda")


def test_compiled_forward_matches_eager(tmp_path, arch_root):
    obs = torch.from_numpy(np.random.default_rng(9).standard_normal((12, 6)).astype(np.float32))
    outs = []
    for compiled in (False, True):
        eng = Engine(tmp_path / str(compiled), archetype_dirs=[arch_root], compile=compiled)
        for i in range(3):
            eng.set_adapter("tiny", f"p{i}", random_adapter(eng, "tiny", f"p{i}", seed=i))
        rt = eng.runtime("tiny")
        assert rt.forward.name == ("compiled" if compiled else "numpy")
        forward = rt.forward if compiled else torch_forward(eng, "tiny")  # the fused gather against eager torch
        with torch.inference_mode():
            outs.append(forward.forward(obs, rt.bank.lookup([f"p{i % 4}" for i in range(12)])))
        eng.close()
    assert (outs[0][0] - outs[1][0]).abs().max() <= 1e-5
    assert (outs[0][1] - outs[1][1]).abs().max() <= 1e-5


def test_batch_to_dicts_equals_row_dicts(engine):
    out = engine.act_batch("tiny", ["a", "b", "c"], np.random.default_rng(3).standard_normal((3, 6)))
    assert out.to_dicts() == [d.to_dict() for d in out.rows()]


def test_observations_that_overflow_the_network_are_refused(engine):
    for p in ("ann", "bob"):
        engine.set_adapter("tiny", p, random_adapter(engine, "tiny", p, seed=3))
    huge = np.full((2, 6), 3e38, dtype=np.float32)
    huge[:, ::2] *= -1
    # the low-rank product overflows to inf - inf = NaN (a repeat caller's merged weights
    # saturate tanh instead: finite logits), so each call is a first one for its player
    with pytest.raises(InvalidInputError, match="non-finite logits"):
        engine.act_batch("tiny", ["ann", "ann"], huge)
    with pytest.raises(InvalidInputError, match="non-finite logits"):
        engine.action_probs("tiny", ["bob", "bob"], huge)
    assert len(engine.act_batch("tiny", ["ann"], np.zeros((1, 6)))) == 1  # and it keeps serving


def test_put_adapter_rows_installs_all_or_none(engine):
    rt = engine.runtime("tiny")
    good = torch.stack([engine.fresh_adapter_row("tiny", p) for p in ("ann", "bob")])  # (2, P)
    metas = engine.put_adapter_rows("tiny", ["ann", "bob"], good, updates=1)
    assert [(m.player, m.version, m.updates) for m in metas] == [("ann", 1, 1), ("bob", 1, 1)]
    bad = good.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(InvalidInputError, match="'bob' has non-finite"):
        engine.put_adapter_rows("tiny", ["ann", "bob"], bad + 1.0, updates=1)
    with pytest.raises(InvalidInputError, match="2 adapters for 1 players"):
        engine.put_adapter_rows("tiny", ["ann"], good)
    assert rt.bank.meta("ann").version == 1 and torch.equal(engine.adapter_row("tiny", "ann"), good[0])  # untouched
    again = engine.put_adapter_rows("tiny", ["bob"], good[1:] * 2, updates=1)[0]
    assert (again.version, again.updates) == (2, 2) and torch.equal(engine.adapter_row("tiny", "bob"), good[1] * 2)
    skipped = engine.put_adapter_rows("tiny", ["ann", "bob"], bad + 1.0, updates=1, skip_non_finite=True)
    assert skipped[0].version == 2 and skipped[1] is None  # bob keeps his adapter
    assert torch.equal(engine.adapter_row("tiny", "ann"), good[0] + 1.0)
    assert torch.equal(engine.adapter_row("tiny", "bob"), good[1] * 2)
