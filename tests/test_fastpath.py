"""The bridge's fast paths agree with the plain ones: numpy small-batch forward and decision
step vs torch, column-wise act_batch parsing vs row by row, the decision encoder vs msgpack,
column-wise episode recording, coalesced replies and the low-priority trainer thread.

Documented exceptions to "tests use public API": comparing a fast path with its plain twin
needs both, so these tests call the private twins (`_columns`/`_row_by_row`,
`_encode_rows`/`_encode_columns` over `_layouts`) and force one rare noise draw (`_rng`)."""

from __future__ import annotations

from types import SimpleNamespace

import msgpack
import numpy as np
import pytest
import torch
from bridge_helpers import RunningBridge, read_reply
from conftest import random_adapter, torch_forward

from npcadapt.archetypes import init_archetype
from npcadapt.engine import Engine
from npcadapt.episodes import EpisodeTracker
from npcadapt.errors import InvalidInputError
from npcadapt.lora.numpy_forward import NumpyForward
from npcadapt.protocol import packed_response
from npcadapt.rpc import DecisionEncoder, Methods
from npcadapt.sampling import ExpNoise, decide, decide_one
from npcadapt.server import Connection, ServerConfig
from npcadapt.types import BatchDecision

OBS = np.linspace(-1, 1, 8, dtype=np.float32)


@pytest.fixture
def odd_root(tmp_path):
    """An archetype off the beaten path: relu, unequal hidden sizes, a critic layer adapted."""
    root = tmp_path / "odd"
    init_archetype(
        root / "odd",
        "odd",
        [("x", 5)],
        ["a", "bb", "ccc"],
        hidden=(16, 8),
        activation="relu",
        rank=2,
        alpha=4.0,
        targets=("actor.0", "actor.2", "critic.1"),
        seed=4,
    )
    return root


@pytest.mark.parametrize("archetype", ["tiny", "odd"])
@pytest.mark.parametrize("products", ["numpy", "torch"])
def test_numpy_forward_matches_torch(tmp_path, arch_root, odd_root, archetype, products):
    eng = Engine(tmp_path / "d", archetype_dirs=[arch_root, odd_root], capacity=8)
    for i, p in enumerate(["ann", "bob", "cid"]):
        eng.set_adapter(archetype, p, random_adapter(eng, archetype, p, scale=1.0, seed=i))
    rt = eng.runtime(archetype)
    assert rt.forward.name == "numpy"  # the default on CPU
    forward = rt.forward
    if products == "torch":  # what batches too large for numpy's matmul take
        forward = NumpyForward(rt.policy, rt.layout, rt.bank, numpy_rows=0)
    reference = torch_forward(eng, archetype)
    mixed = ["ann", "dee", "bob", "cid", "ann", "nobody", "cid"]  # interleaved, some without adapters
    obs = np.random.default_rng(0).standard_normal((len(mixed), rt.archetype.spec.obs_dim)).astype(np.float32)
    for players in (mixed, mixed[:1], ["dee", "nobody"], ["bob"] * 5):
        x = obs[: len(players)]
        slots = rt.bank.lookup(players)
        with torch.inference_mode():
            want_logits, want_value = reference.forward(torch.from_numpy(x), slots)
        logits, value = forward.logits(x, slots)  # one adapter for all rows goes in as one row
        assert np.abs(logits - want_logits.numpy()).max() <= 1e-5
        assert np.abs(value - want_value.numpy()).max() <= 1e-5
        if slots.any():
            logits, _ = forward.compute(x, rt.bank.gather(slots).numpy())  # every row gathered
            assert np.abs(logits - want_logits.numpy()).max() <= 1e-5
    eng.close()


@pytest.mark.parametrize("archetype", ["tiny", "odd"])
def test_merged_weights_for_a_repeat_caller_match_the_low_rank_path(tmp_path, arch_root, odd_root, archetype):
    eng = Engine(tmp_path / "d", archetype_dirs=[arch_root, odd_root], capacity=8)
    rt = eng.runtime(archetype)
    forward = NumpyForward(rt.policy, rt.layout, rt.bank, merged_capacity=2)
    obs = np.random.default_rng(0).standard_normal((3, rt.archetype.spec.obs_dim)).astype(np.float32)

    def reference(player):  # the torch forward of the player's adapter
        with torch.inference_mode():
            return torch_forward(eng, archetype).forward(torch.from_numpy(obs), rt.bank.lookup([player] * 3))[0].numpy()

    for round_ in range(2):
        for i, p in enumerate(["ann", "bob", "cid"]):  # three adapters through a cache of two
            if round_ == 0:
                eng.set_adapter(archetype, p, random_adapter(eng, archetype, p, scale=1.0, seed=i))
            for call in range(3):  # the first call takes the low-rank path, later ones the merged weights
                got = forward.logits(obs, rt.bank.lookup([p] * 3))[0]
                assert np.abs(got - reference(p)).max() <= 1e-5, (p, call)
            assert len(forward.merged_keys) <= 2
    assert len(forward.merged_keys) == 2  # bob's and cid's merged weights served the later calls
    key = rt.bank.content_id(rt.bank.lookup(["cid"])[0])
    assert forward.merged_keys[-1] == key  # cid's, the most recently used
    eng.set_adapter(archetype, "cid", random_adapter(eng, archetype, "cid", scale=1.0, seed=7))  # a new version
    assert rt.bank.content_id(rt.bank.lookup(["cid"])[0]) != key  # so the cached copy is never used again
    for _ in range(3):
        assert np.abs(forward.logits(obs, rt.bank.lookup(["cid"] * 3))[0] - reference("cid")).max() <= 1e-5
    with torch.no_grad():
        rt.policy.actor[0].bias.add_(0.5)  # the base changed in place: a refresh drops merged copies
    forward.refresh()
    assert np.abs(forward.logits(obs, rt.bank.lookup(["cid"] * 3))[0] - reference("cid")).max() <= 1e-5
    assert not forward.merged_keys
    eng.close()


def test_numpy_forward_copies_the_frozen_base_once_and_refresh_rereads_it(engine):
    rt = engine.runtime("tiny")
    assert not any(p.requires_grad for p in rt.policy.parameters())  # a loaded base is frozen
    obs, base = np.ones((2, 6), np.float32), np.zeros(2, np.int64)
    before, _ = rt.forward.logits(obs, base)
    with torch.no_grad():
        rt.policy.actor[0].bias.add_(0.5)
    assert np.array_equal(rt.forward.logits(obs, base)[0], before)  # no per-call check of the weights
    rt.forward.refresh()
    after, _ = rt.forward.logits(obs, base)
    with torch.inference_mode():
        want, _ = rt.policy(torch.from_numpy(obs))
    assert not np.allclose(before, after) and np.abs(after - want.numpy()).max() <= 1e-5


def test_noise_stream_is_the_same_however_it_is_taken():
    whole = ExpNoise(7).take(100_000)
    noise = ExpNoise(7, block=1000)
    sizes = [1, 8, 999, 3, 2500, 1000, 7, 40_000]  # within a block, across blocks, larger than one
    parts = [noise.take(k).copy() for k in sizes]
    assert np.array_equal(np.concatenate(parts), whole[: sum(sizes)])
    assert whole.dtype == np.float32 and whole.min() > 0 and abs(whole.mean() - 1) < 0.01


def test_noise_never_holds_zero():
    noise = ExpNoise(0)
    noise._rng = SimpleNamespace(standard_exponential=lambda k, dtype: np.zeros(k, dtype))  # a 2^-24 event, forced
    q = noise.take(16)
    assert (q > 0).all()  # so p / q never divides by zero (0 / 0 would be NaN, which argmax picks)


def test_decide_follows_the_probabilities_and_masks():
    n = 20_000  # one distribution repeated: the draw frequencies must match it
    logits = np.tile(np.array([[2.0, 0.0, -1.0, 1.0, 5.0]], np.float32), (n, 1))
    mask = np.tile(np.array([[True, True, True, True, False]]), (n, 1))  # the likeliest action is masked
    probs = np.exp(logits[0, :4]) / np.exp(logits[0, :4]).sum()
    action, logp, entropy = decide(logits, mask, None, ExpNoise(0))
    freq = np.bincount(action, minlength=5) / n
    assert freq[4] == 0 and np.abs(freq[:4] - probs).max() < 0.015
    assert np.allclose(logp, np.log(probs)[action], atol=1e-5)
    assert np.allclose(entropy, -(probs * np.log(probs)).sum(), atol=1e-5)
    again, _, _ = decide(logits, mask, None, ExpNoise(0))
    assert np.array_equal(action, again)  # seeded
    greedy = np.arange(n) % 2 == 0
    picked, _, _ = decide(logits, mask, greedy, ExpNoise(1))
    assert (picked[greedy] == 0).all() and (picked[~greedy] != 4).all()


def test_decide_one_draws_what_decide_draws_row_by_row():
    rng = np.random.default_rng(1)
    n = 20_000
    logits = (rng.standard_normal((n, 6)) * 3).astype(np.float32)
    mask = rng.random((n, 6)) < 0.7
    mask[np.arange(n), rng.integers(0, 6, n)] = True  # every row allows something
    greedy = rng.random(n) < 0.2
    for m, g in ((None, None), (mask, greedy)):
        action, logp, entropy = decide(logits, m, g, ExpNoise(5))
        noise = ExpNoise(5)  # the same stream, taken a row at a time
        rows = [
            decide_one(logits[i], None if m is None else m[i], g is not None and bool(g[i]), noise) for i in range(n)
        ]
        assert np.array_equal(action, [r[0] for r in rows])
        assert np.abs(logp - [r[1] for r in rows]).max() <= 1e-5
        assert np.abs(entropy - [r[2] for r in rows]).max() <= 1e-5
    assert mask[np.arange(n), action].all() and len(set(action.tolist())) == 6


def test_engine_decides_the_same_one_row_at_a_time_as_in_a_batch(tmp_path, arch_root):
    """The single-row path (Python floats) and the batch path (numpy) over the same seed."""
    obs = np.random.default_rng(6).standard_normal((40, 6)).astype(np.float32)
    players = [f"p{i % 4}" for i in range(40)]
    masks = np.random.default_rng(7).random((40, 4)) < 0.6
    masks[:, 1] = True
    outs = []
    for one_at_a_time in (False, True):
        eng = Engine(tmp_path / str(one_at_a_time), archetype_dirs=[arch_root], capacity=8, seed=3)
        for i in range(3):  # p3 has no adapter
            eng.set_adapter("tiny", f"p{i}", random_adapter(eng, "tiny", f"p{i}", scale=1.0, seed=i))
        if one_at_a_time:
            rows = [eng.act_batch("tiny", [players[i]], obs[i : i + 1], masks=masks[i : i + 1]) for i in range(40)]
            outs.append(
                {f: np.concatenate([getattr(r, f) for r in rows]) for f in ("action", "logp", "entropy", "value")}
            )
        else:
            out = eng.act_batch("tiny", players, obs, masks=masks)
            outs.append({f: getattr(out, f) for f in ("action", "logp", "entropy", "value")})
        eng.close()
    batch, single = outs
    assert np.array_equal(batch["action"], single["action"]) and len(set(batch["action"].tolist())) > 1
    for field in ("logp", "entropy", "value"):
        assert single[field].dtype == np.float32 and np.abs(batch[field] - single[field]).max() <= 1e-5
    assert masks[np.arange(40), batch["action"]].all()


@pytest.mark.parametrize("n", [1, 24, 300])  # one row (Python floats) and batches
def test_act_batch_numpy_and_torch_paths_agree_with_masks_and_greedy(tmp_path, arch_root, n):
    obs = np.random.default_rng(2).standard_normal((n, 6)).astype(np.float32)
    players = [f"p{i % 5}" for i in range(n)]
    masks = np.random.default_rng(3).random((n, 4)) < 0.5
    masks[:, 2] = True
    greedy = np.arange(n) % 3 == 0
    outs = []
    for numpy_forward in (True, False):
        eng = Engine(tmp_path / str(numpy_forward), archetype_dirs=[arch_root], capacity=8, seed=11)
        for i in range(4):
            eng.set_adapter("tiny", f"p{i}", random_adapter(eng, "tiny", f"p{i}", scale=1.0, seed=i))
        rt = eng.runtime("tiny")
        assert rt.forward.name == "numpy"  # the default on CPU
        if not numpy_forward:
            rt.forward = torch_forward(eng, "tiny")  # force the torch forward
        outs.append([eng.act_batch("tiny", players, obs, masks=masks, greedy=greedy) for _ in range(3)])
        outs[-1].append(eng.act("tiny", "p1", obs[0], mask=[False, True, False, False]))
        eng.close()
    for fast, slow in zip(outs[0][:3], outs[1][:3]):
        assert np.array_equal(fast.action, slow.action)  # same generator state -> same draws
        for field in ("logp", "value", "entropy"):
            assert np.abs(getattr(fast, field) - getattr(slow, field)).max() <= 1e-5
        assert masks[np.arange(n), fast.action].all()
    if n > 1:
        assert len(set(outs[0][0].action[~greedy].tolist())) > 1  # really sampled
    assert outs[0][3].action == outs[1][3].action == 1


def test_greedy_rows_take_the_masked_argmax_on_the_numpy_path(engine):
    obs = np.random.default_rng(4).standard_normal((6, 6)).astype(np.float32)
    mask = np.array([[True, False, True, False]] * 6)
    out = engine.act_batch("tiny", ["x"] * 6, obs, masks=mask, greedy=True)
    with torch.inference_mode():
        logits, _ = engine.runtime("tiny").policy(torch.from_numpy(obs))
    want = logits.masked_fill(~torch.from_numpy(mask), float("-inf")).argmax(-1).numpy()
    assert np.array_equal(out.action, want)


def test_decision_encoder_rows_and_columns_match_msgpack():
    names = ("a", "bé", "a_much_longer_action_name")
    enc = DecisionEncoder(names)
    rng = np.random.default_rng(5)
    for n, first_id in ((1, 1), (7, 2**32 - 3), (DecisionEncoder.VECTOR_ROWS, 5), (300, 2**40)):
        out = BatchDecision(
            decision=np.arange(n, dtype=np.int64) + first_id,
            action=rng.integers(0, 3, n),
            logp=-rng.random(n, dtype=np.float32),
            value=rng.standard_normal(n).astype(np.float32),
            entropy=rng.random(n, dtype=np.float32),
            adapter_version=rng.integers(0, 9, n),
            action_names=names,
        )
        auto = enc.encode(out)
        for wide in enc._layouts:  # every layout wide enough for these ids packs the same both ways
            if wide[0] or first_id + n <= 2**32:
                assert enc._encode_rows(out, enc._layouts[wide]) == enc._encode_columns(out, enc._layouts[wide])
        assert len(auto.offsets) == n + 1 and auto.offsets[-1] == len(auto.data)
        rows = [msgpack.unpackb(auto.data[a:b]) for a, b in zip(auto.offsets, auto.offsets[1:])]
        assert rows == out.to_dicts()


def test_packed_response_frames_like_msgpack():
    items = [{"k": i} for i in range(20)]
    for msgid in (0, 127, 128, 2**32 - 1):
        for count in (0, 1, 15, 16):
            body = b"".join(msgpack.packb(x) for x in items[:count])
            assert msgpack.unpackb(packed_response(msgid, body, count)) == [1, msgid, None, items[:count]]
        assert msgpack.unpackb(packed_response(msgid, msgpack.packb(items[0]))) == [1, msgid, None, items[0]]
    with pytest.raises(InvalidInputError, match="msgid"):
        packed_response(-1, b"\xc0")


def test_act_batch_columns_equal_row_by_row_and_bad_rows_are_named(tmp_path):
    import npcadapt

    svc = npcadapt.open(tmp_path / "d", seed=0)
    try:
        methods = Methods(svc)
        spec = svc.archetypes["duelist"].spec
        raw = OBS.astype("<f4").tobytes()
        rows = [[f"p{i}", "npc", raw] for i in range(5)]
        fast = methods._columns(spec, rows)
        slow = methods._row_by_row(spec, rows)
        assert fast is not None and fast.players == slow.players and fast.npcs == slow.npcs
        assert np.array_equal(fast.obs, slow.obs) and fast.masks is slow.masks is None and fast.greedy is None
        # rows the column pass does not take are parsed one by one, with the same outcome
        mixed = rows[:2] + [["p9", "npc", OBS.tolist(), {"greedy": True, "mask": [True] * 8}]]
        assert methods._columns(spec, mixed) is None
        _, block = methods.parse_act_batch(["duelist", mixed])
        assert block.greedy.tolist() == [False, False, True] and block.masks.all()
        for bad, words in (
            ([["p", "npc", raw], ["q", "", raw]], "row 1: npc id"),
            ([["p", "npc", raw], ["x" * 300, "npc", raw]], "row 1: player id"),
            ([["p", "npc", raw], ["q", "npc", raw[:-4]]], "row 1: binary obs"),
            ([["p", "npc", raw], ["q", "npc", np.full(8, np.inf, "<f4").tobytes()]], "row 1: obs contains"),
        ):
            with pytest.raises(InvalidInputError, match=words):
                methods.parse_act_batch(["duelist", bad])
        with pytest.raises(InvalidInputError, match="player id"):
            methods.parse_act_batch(["duelist", [["p\udc80", "npc", raw]]])  # not encodable as UTF-8
    finally:
        svc.close()


def test_tracker_records_column_wise_and_trims_with_rewards_aligned():
    tracker = EpisodeTracker(max_open_steps=4)
    obs = np.arange(12, dtype=np.float32).reshape(6, 2)
    for step in range(6):
        row = obs[step : step + 1]
        tracker.record(
            "a",
            ["ann"],
            ["n"],
            row,
            None,
            np.array([step]),
            np.array([-0.1 * step], np.float32),
            np.array([0.5], np.float32),
            np.array([100 + step]),
        )
        tracker.feedback("ann", "n", float(step), False)
    obs[:] = -1  # the caller reuses its buffer: recorded steps keep their own copy
    assert tracker.feedback("ann", "n", 10.0, True) is True
    assert tracker.dropped_steps == 2
    (ep,) = tracker.take(tracker.ready(1))[("a", "ann")]
    assert ep.action == [2, 3, 4, 5] and ep.decision == [102, 103, 104, 105]
    assert ep.reward == [2.0, 3.0, 4.0, 15.0]
    assert np.array_equal(np.stack(ep.obs), np.arange(4, 12, dtype=np.float32).reshape(4, 2))
    assert ep.mask == [None] * 4 and ep.logp[0] == pytest.approx(-0.2)
    assert tracker.open_count() == 0
    with pytest.raises(InvalidInputError, match="no decision"):
        tracker.feedback("ann", "n", 1.0, False)


def test_replies_of_one_batch_go_out_as_one_write_per_connection(tmp_path):
    writes = []
    original = Connection.send

    def counting(self, data):
        writes.append((id(self), data))
        original(self, data)

    with RunningBridge(tmp_path / "d", ServerConfig(port=0, batch_wait=0.05)) as running:
        Connection.send = counting
        try:
            socks = [running.connect() for _ in range(2)]
            raw = OBS.astype("<f4").tobytes()
            for s in socks:
                s.sendall(b"".join(msgpack.packb([0, i, "act", ["duelist", f"p{i}", "npc", raw]]) for i in range(20)))
            for s in socks:
                unpacker, replies = msgpack.Unpacker(), []
                while len(replies) < 20:
                    unpacker.feed(s.recv(1 << 16))
                    replies.extend(unpacker)
                assert sorted(r[1] for r in replies) == list(range(20)) and all(r[2] is None for r in replies)
                assert all(
                    r[3]["action_name"] == running.service.archetypes["duelist"].spec.actions[r[3]["action"]]
                    for r in replies
                )
            assert len(writes) == 2  # 40 replies, 2 connections, 1 merged batch
        finally:
            Connection.send = original


def test_a_burst_of_feedback_is_one_batch_and_refuses_exactly_what_one_by_one_would(tmp_path):
    import npcadapt
    from npcadapt.log import read_records

    raw = OBS.astype("<f4").tobytes()
    burst = [
        ["ann", "n", 1.0, False],
        ["ann", "n", 2.0, True],
        ["ann", "n", 3.0],  # closed: refused
        ["bob", "n", float("nan")],
        ["cid", "n", 1.0, True],
        ["nobody", "n", 1.0],
        ["dee", "n", 0.5],
    ]
    outcomes = []
    for batched in (True, False):
        svc = npcadapt.open(tmp_path / str(batched), seed=0)
        methods = Methods(svc)
        methods.run_blocks(
            "duelist", [methods.parse_act(["duelist", p, "n", raw])[1] for p in ("ann", "bob", "cid", "dee")]
        )
        if batched:
            refused = methods.feedback_many(burst)
        else:
            refused = []
            for params in burst:
                try:
                    methods.feedback(params)
                except InvalidInputError as exc:
                    refused.append(exc)
        svc.flush()
        records = [r for r in read_records(tmp_path / str(batched) / "logs") if r["t"] == "feedback"]
        episodes = svc.tracker.take(svc.tracker.ready(1))
        outcomes.append(
            (
                [str(e) for e in refused],
                sum(len(r["players"]) for r in records),
                len(records),
                {k: [ep.reward for ep in eps] for k, eps in episodes.items()},
                svc.tracker.open_count(),
            )
        )
        svc.close()
    (errs, fed, n_records, eps, still_open), (errs1, fed1, n_records1, eps1, still_open1) = outcomes
    assert errs == errs1 and len(errs) == 3 and "reward" in errs[1]
    assert fed == fed1 == 4 and n_records == 1 and n_records1 == 4  # the burst is one log record
    assert eps == eps1 == {("duelist", "ann"): [[3.0]], ("duelist", "cid"): [[1.0]]}
    assert still_open == still_open1 == 2  # bob and dee


def test_feedback_notifications_in_one_read_are_counted_and_applied(tmp_path):
    with RunningBridge(tmp_path / "d") as running:
        sock = running.connect()
        raw = OBS.astype("<f4").tobytes()
        rows = [[p, "n", raw] for p in ("ann", "bob")]
        sock.sendall(msgpack.packb([0, 1, "act_batch", ["duelist", rows]]))
        assert read_reply(sock)[2] is None
        notes = [["ann", "n", 1.0, True], ["ghost", "n", 1.0], ["bob", "n", 0.5, True]]
        sock.sendall(b"".join(msgpack.packb([2, "feedback", p]) for p in notes) + msgpack.packb([0, 2, "stats", []]))
        reply = read_reply(sock)
        assert reply[1] == 2
        stats = reply[3]
        assert stats["notifications"] == 3 and stats["errors"] == 1 and stats["feedback"] == 2
        assert stats["open_episodes"] == 0
