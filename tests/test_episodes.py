"""Episode bookkeeping: feedback batches are all or nothing; recorded steps are copies."""

from __future__ import annotations

import numpy as np
import pytest

import npcadapt
from npcadapt.errors import InvalidInputError

OBS = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)


@pytest.fixture
def svc(tmp_path, arch_root):
    service = npcadapt.open(tmp_path / "data", archetype_dirs=[arch_root], seed=0)
    yield service
    service.close()


def test_feedback_batch_is_all_or_nothing(svc):
    svc.act("tiny", "p1", OBS[0], npc="n")
    with pytest.raises(InvalidInputError, match="'p2'"):
        svc.feedback_batch(["p1", "p2"], ["n", "n"], [1.0, 1.0], [True, True])
    assert svc.tracker.refused(["p1"], ["n"], [True]) == [] and svc.tracker.completed_count("tiny", "p1") == 0
    with pytest.raises(InvalidInputError, match="'p1'"):  # a row after the one that closes the episode
        svc.feedback_batch(["p1", "p1"], ["n", "n"], [1.0, 2.0], [True, False])
    assert svc.tracker.refused(["p1"], ["n"], [True]) == []
    svc.feedback_batch(["p1"], ["n"], [3.0], [True])
    (episode,) = svc.tracker.take([("tiny", "p1")])[("tiny", "p1")]
    assert episode.reward == [3.0]  # the refused batches added nothing


def test_recorded_steps_do_not_share_the_callers_arrays(svc):
    obs = OBS[:2].copy()
    out = svc.act_batch("tiny", ["p1", "p2"], obs, npcs=["n", "n"])
    actions, logps = out.action.copy(), out.logp.copy()
    out.action[:] = (actions + 1) % 4  # the caller changes its result and reuses its buffer
    out.logp[:] = 0.0
    obs[:] = 99.0
    svc.feedback_batch(["p1", "p2"], ["n", "n"], [1.0, 0.0], [True, True])
    episodes = svc.tracker.take([("tiny", "p1"), ("tiny", "p2")])
    for i, player in enumerate(["p1", "p2"]):
        (ep,) = episodes[("tiny", player)]
        assert ep.action == [int(actions[i])] and ep.logp[0] == pytest.approx(float(logps[i]))
        assert np.array_equal(ep.obs[0], OBS[i])


def test_npc_ids_follow_the_player_id_rule_and_a_refused_one_records_nothing(svc):
    for bad in ("n\udc80", "", "x" * 257):
        with pytest.raises(InvalidInputError, match="npc id"):
            svc.act("tiny", "p1", OBS[0], npc=bad)
    assert svc.tracker.open_count() == 0 and svc.engine.counters["decisions"] == 0


def test_tensor_observations_are_recorded_as_decided(svc):
    import torch

    obs = torch.tensor(OBS[:2], requires_grad=True)
    out = svc.act_batch("tiny", ["p1", "p2"], obs, npcs=["n", "n"])
    svc.feedback_batch(["p1", "p2"], ["n", "n"], [1.0, 0.0], [True, True])
    episodes = svc.tracker.take([("tiny", "p1"), ("tiny", "p2")])
    for i, player in enumerate(["p1", "p2"]):
        (ep,) = episodes[("tiny", player)]
        assert np.array_equal(ep.obs[0], OBS[i]) and ep.action == [int(out.action[i])]


def test_a_long_open_episode_keeps_its_own_rows_not_every_shared_batch():
    """An NPC that never ends its episode, decided in wide batches: it holds its own rows
    (compacted every COMPACT_STEPS steps), not every batch it shared; the steps are unchanged."""
    from npcadapt.episodes import COMPACT_STEPS, EpisodeTracker

    tracker = EpisodeTracker()
    rng = np.random.default_rng(1)
    n, steps = 64, 3 * COMPACT_STEPS + 10
    players = [f"p{i}" for i in range(n)]
    want_obs, want_masks = [], []
    for t in range(steps):
        obs = rng.standard_normal((n, 6)).astype(np.float32)
        masks = None if t % 3 else rng.random((n, 4)) < 0.8  # some batches without masks
        tracker.record("tiny", players, ["n"] * n, obs, masks, np.full(n, t % 4), np.full(n, -1.0 - t),
                       np.zeros(n), np.arange(n) + t * n)
        want_obs.append(obs[7])
        want_masks.append(np.ones(4, bool) if masks is None else masks[7])
    held = tracker._open[("p7", "n")]
    assert len({id(b) for b in held.batches}) <= COMPACT_STEPS + 3  # 3 own-row chunks + the recent batches
    assert sum(b.obs.shape[0] for b in {id(b): b for b in held.batches}.values()) < 3 * steps  # not n * steps
    tracker.feedback_batch(["p7"], ["n"], [1.0], [True])
    (episode,) = tracker.take([("tiny", "p7")])[("tiny", "p7")]
    assert np.array_equal(np.stack(episode.obs), np.stack(want_obs))
    got_masks = [np.ones(4, bool) if m is None else m for m in episode.mask]
    assert np.array_equal(np.stack(got_masks), np.stack(want_masks))
    assert episode.action == [t % 4 for t in range(steps)] and episode.logp == [-1.0 - t for t in range(steps)]
    assert episode.decision == [7 + t * n for t in range(steps)] and episode.reward[-1] == 1.0


def test_skip_refused_applies_and_records_the_other_rows(svc):
    from npcadapt.log import read_records

    svc.act("tiny", "p1", OBS[0], npc="n")
    refused = svc.feedback_batch(["p2", "p1", "p1"], ["n", "n", "n"], [1.0, 2.0, 3.0], [False, True, False],
                                 skip_refused=True)
    assert refused == [0, 2]  # no decision for p2; p1's episode closed by the row before
    (episode,) = svc.tracker.take([("tiny", "p1")])[("tiny", "p1")]
    assert episode.reward == [2.0]
    svc.flush()
    (record,) = [r for r in read_records(svc.data_dir / "logs") if r["t"] == "feedback"]
    assert record["players"] == ["p1"] and record["reward"] == [2.0] and svc.counters["feedback"] == 1
