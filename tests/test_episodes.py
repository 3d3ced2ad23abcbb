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
