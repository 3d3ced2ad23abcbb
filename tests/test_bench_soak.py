"""`npcadapt bench soak` end to end at a tiny size: a real server under good load, hostile
connections, a trainer SIGKILLed, a full disk and a server SIGKILL + restart; nothing that a
flush acknowledged is lost. (About 30 s; no wall-clock assertions.)"""

from __future__ import annotations

import json

import pytest

from npcadapt.cli import main

pytestmark = pytest.mark.timeout(240)

KEYS = (
    "requests",
    "errors_by_code",
    "act_p99_ms",
    "rss_start_mb",
    "rss_end_mb",
    "rss_max_mb",
    "rss_max_at_s",
    "disk_full_from_s",
    "rss_growth_last_half_pct",
    "rss_by_server_run",
    "trainer_kills",
    "trainer_restarts",
    "server_kills",
    "server_restarts",
    "acknowledged_flushes",
    "acknowledged_flushes_lost",
    "disk_full_mode",
    "disk_full_errors_reported",
    "served_during_disk_full",
    "good_client_p99_ms",
    "good_client_p99_ms_under_attack",
    "good_client_p99_ratio",
    "input_budget_mb",
    "idle_footprint_mb",
    "model_footprint_mb",
    "output_allowance_mb",
    "hostile",
    "targets",
    "seconds",
)


def test_short_soak_loses_nothing_acknowledged_and_survives_every_fault(capsys, tmp_path):
    out = tmp_path / "soak.json"
    code = main(
        [
            "bench",
            "soak",
            "--minutes",
            "0.3",
            "--clients",
            "30",
            "--players-per-client",
            "1",
            "--think-ms",
            "50",
            "--server-kills",
            "1",
            "--trainer-kills",
            "3",
            "--warmup-s",
            "4",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == result  # --out: the same figures
    assert not [key for key in KEYS if key not in result]

    # acknowledged data: every check (after the SIGKILL, after the final SIGTERM) found it all
    assert result["acknowledged_flushes"] > 0 and result["acknowledged_flushes_lost"] == 0
    assert len(result["ack_checks"]) == 2 and all(not c["lost"] for c in result["ack_checks"])
    assert result["ack_checks"][-1]["decisions_acknowledged"] > 0
    assert all(c["corrupt_log_records"] == 0 for c in result["ack_checks"])

    # faults were injected and recovered from
    assert result["server_kills"] == 1
    assert result["trainer_kills"] >= 1 and result["trainer_restarts"] >= 1
    if result["disk_full_mode"] == "tmpfs":  # root can mount one (CI runs as root)
        assert result["disk_full_filler_mb"] > 0
    else:  # no mount possible: the file-layer fallback, and why
        assert result["disk_full_mode"] == "rlimit" and result["disk_full_fallback_reason"]
    assert result["disk_full_errors_reported"] >= 1  # flush said so (code 4, naming the full disk)
    assert result["served_during_disk_full"] > 0  # decisions were still answered meanwhile

    # hostile connections were turned away and did not stop the good client
    hostile = result["hostile"]["by_kind"]
    for kind in ("garbage", "bomb", "wrong_token"):
        assert hostile[kind].get("closed_by_server", 0) > 0 and not hostile[kind].get("not_closed"), kind
    assert result["hostile"].get("reply_code_5", 0) > 0  # unauthenticated floods got UNAUTHORIZED
    assert result["good_client_calls_without_attack"] > 0 and result["good_client_calls_under_attack"] > 0
    assert result["errors_by_code"].get("5", 0) > 0 and result["requests"] > 0

    # memory figures and targets are reported (their values are the long run's business)
    assert len(result["rss_by_server_run"]) == 2  # the server really ran again after its SIGKILL
    # the footprint is the server warmed by the good load (not the idle one), and the bound is built on it
    assert result["model_footprint_mb"] != result["idle_footprint_mb"] and result["warmup_s"] == 4
    allowance = result["input_budget_mb"] + result["model_footprint_mb"] + result["output_allowance_mb"]
    assert abs(result["rss_bound_mb"] - allowance) < 0.2
    assert {
        "nothing_acknowledged_lost",
        "rss_growth_last_half_under_5pct",
        "good_client_p99_under_attack_within_3x",
        "rss_within_budget_plus_footprint_plus_output_allowance",
    } <= set(result["targets"])


def test_the_acknowledgement_check_finds_what_is_missing(tmp_path):
    """The soak's loss check is not vacuous: acknowledged data absent from disk is reported."""
    from npcadapt.bench.soak_faults import verify_acknowledged

    (tmp_path / "logs").mkdir()
    check = verify_acknowledged(tmp_path, "duelist", {"p": 1}, {("p", "n"): 1}, {("p", "n"): 1})
    assert len(check["lost"]) == 3  # the adapter version, the decisions and the feedback
