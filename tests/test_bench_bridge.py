"""`npcadapt bench bridge` end to end at a tiny size: every figure present and sane."""

from __future__ import annotations

import json

from npcadapt.cli import main


def test_bench_bridge_prints_every_figure(capsys):
    main(
        ["bench", "bridge", "--seconds", "1.0", "--backlog-players", "1500", "--driver-players", "4"]
    )  # 0.3 s: no update yet under load
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in (
        "act_p99_ms",
        "echo_p99_ms",
        "act_p99_ms_with_adapter",
        "act_p99_ms_while_training",
        "act_p99_ms_while_training_with_driver",
        "act_p99_ms_same_load_no_training",
    ):
        assert 0 < result[key] < 1000, key
    assert result["single_row_decisions_per_s"] > 1000 and result["batched_decisions_per_s"] > 1000
    assert result["training_updates"] > 0  # the trainer really updated adapters during the measurement
    assert 0 < result["backlog_at_start"] <= 1500
    assert result["driver_training_updates"] >= 0 and result["control_updates"] == 0  # no done: no training
    assert isinstance(result["trainer_busy_throughout"], bool)
    assert result["trainer_start_wait_s"] >= 0  # measuring began once the trainer process was up
