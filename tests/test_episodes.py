"""Episode bookkeeping: feedback batches are all or nothing; recorded steps are copies."""

from __future__ import annotations

import numpy as np
import pytest

import npcadapt
from npcadapt.episodes import EpisodeTracker
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


def test_a_never_ending_episode_keeps_a_bounded_number_of_shared_batches():
    """An NPC that never ends its episode, decided in wide batches with others whose
    episodes do end: it keeps at most max_open_steps steps, so at most that many batches."""
    from npcadapt.episodes import EpisodeTracker

    tracker = EpisodeTracker()
    limit, n = tracker.max_open_steps, 64
    players = [f"p{i}" for i in range(n)]
    for t in range(2 * limit + 10):
        obs = np.full((n, 6), t, np.float32)
        tracker.record(
            "tiny", players, ["n"] * n, obs, None, np.zeros(n), np.zeros(n), np.zeros(n), np.arange(n) + t * n
        )
        tracker.feedback_batch(players[1:], ["n"] * (n - 1), np.zeros(n - 1), [True] * (n - 1))  # all but p0 end
        tracker.take([("tiny", p) for p in players[1:]])
    assert tracker.open_steps("p0", "n") <= limit  # each step refers to one batch: at most that many batches
    assert tracker.dropped_steps > limit
    tracker.feedback_batch(["p0"], ["n"], [1.0], [True])
    (episode,) = tracker.take([("tiny", "p0")])[("tiny", "p0")]
    assert episode.obs[-1][0] == 2 * limit + 9 and episode.decision[-1] == (2 * limit + 9) * n  # the newest steps


def test_skip_refused_applies_and_records_the_other_rows(svc):
    from npcadapt.log import read_records

    svc.act("tiny", "p1", OBS[0], npc="n")
    refused = svc.feedback_batch(
        ["p2", "p1", "p1"], ["n", "n", "n"], [1.0, 2.0, 3.0], [False, True, False], skip_refused=True
    )
    assert refused == [0, 2]  # no decision for p2; p1's episode closed by the row before
    (episode,) = svc.tracker.take([("tiny", "p1")])[("tiny", "p1")]
    assert episode.reward == [2.0]
    svc.flush()
    (record,) = [r for r in read_records(svc.data_dir / "logs") if r["t"] == "feedback"]
    assert record["players"] == ["p1"] and record["reward"] == [2.0] and svc.counters["feedback"] == 1


def test_ready_lists_players_in_the_order_they_became_ready_up_to_a_limit():
    tracker = EpisodeTracker()
    for player in ("c", "a", "b"):
        for _ in range(2):
            tracker.record("arch", [player], ["n"], np.zeros((1, 2), np.float32), None, [0], [0.0], [0.0], [1])
            tracker.feedback(player, "n", 1.0, True)
    tracker.record("arch", ["d"], ["n"], np.zeros((1, 2), np.float32), None, [0], [0.0], [0.0], [1])
    tracker.feedback("d", "n", 1.0, True)  # one episode: not ready for 2
    assert tracker.ready(2) == [("arch", "c"), ("arch", "a"), ("arch", "b")]
    assert tracker.ready(2, limit=2) == [("arch", "c"), ("arch", "a")]
    assert tracker.ready(1, limit=10)[-1] == ("arch", "d")


def _play(tracker: EpisodeTracker, player: str, steps: int, reward: float = 1.0) -> None:
    """One episode of `steps` decisions, each rewarded, the last one `done`."""
    for k in range(steps):
        tracker.record("arch", [player], ["n"], np.zeros((1, 2), np.float32), None, [0], [0.0], [0.0], [k])
        tracker.feedback(player, "n", reward, k == steps - 1)


def test_past_max_done_steps_the_oldest_completed_episodes_are_discarded_and_the_count_drains():
    """Players who never complete enough episodes for an update cannot pin the bound:
    the oldest completed episodes go first, the newest is kept whole, nothing is merged."""
    tracker = EpisodeTracker(max_done_steps=10)
    for player in ("stale1", "stale2", "stale3"):  # 3-step episodes that never become ready (say 4 needed)
        _play(tracker, player, 3)
    assert tracker.done_steps == 9 and tracker.dropped_episodes == 0
    _play(tracker, "fresh", 3)  # 12 > 10: stale1's (the oldest) goes
    assert tracker.done_steps == 9 and tracker.dropped_episodes == 1
    assert tracker.completed_count("arch", "stale1") == 0 and tracker.completed_count("arch", "fresh") == 1
    for _ in range(3):
        _play(tracker, "fresh", 3)
    assert tracker.done_steps <= 10 and tracker.completed_count("arch", "stale3") == 0
    (key,) = tracker.ready(3)
    episodes = tracker.take([key])[key]
    assert key == ("arch", "fresh") and [ep.reward for ep in episodes] == [[1.0] * 3] * 3  # whole, not merged
    assert tracker.done_steps == 0
    _play(tracker, "huge", 11)  # longer than the bound by itself: discarded at once
    assert tracker.done_steps == 0 and tracker.completed_count("arch", "huge") == 0
    assert tracker.dropped_episodes == 5 and tracker.done_count() == 0


def test_forgetting_a_player_keeps_the_oldest_first_order_of_the_others():
    tracker = EpisodeTracker(max_done_steps=4)
    _play(tracker, "a", 2)
    _play(tracker, "b", 2)
    tracker.forget_player("arch", "a")
    _play(tracker, "c", 2)
    assert tracker.done_steps == 4 and tracker.dropped_episodes == 0
    _play(tracker, "d", 2)  # b's goes, not c's
    assert [k[1] for k in tracker.ready(1)] == ["c", "d"] and tracker.dropped_episodes == 1


def test_restored_episodes_are_taken_again_unchanged():
    """Episodes taken for a forward that failed go back to the tracker (npcadapt/lease.py)."""
    tracker = EpisodeTracker()
    obs = np.arange(12, dtype=np.float32).reshape(2, 6)
    masks = np.array([[True, False, True, True], [True, True, True, True]])
    for t in range(3):
        tracker.record(
            "tiny", ["p", "q"], ["n", "n"], obs + t, masks, [t, 1], [-0.5, -0.1], [0.2, 0.3], [10 + t, 20 + t]
        )
        tracker.feedback_batch(["p", "q"], ["n", "n"], [1.0 * t, 0.0], [t == 2, t == 2])
    taken = tracker.take([("tiny", "p")])[("tiny", "p")]
    tracker.restore("tiny", "p", taken)
    again = tracker.take([("tiny", "p")])[("tiny", "p")]
    assert len(again) == 1 and tracker.done_steps == 3
    for a, b in zip(taken, again):
        assert (a.npc, a.action, a.logp, a.value, a.reward, a.decision) == (
            b.npc,
            b.action,
            b.logp,
            b.value,
            b.reward,
            b.decision,
        )
        assert all(np.array_equal(x, y) for x, y in zip(a.obs, b.obs))
        assert all(np.array_equal(x, y) for x, y in zip(a.mask, b.mask))
