"""Start-up and CLI failures: one line on stderr naming the problem, a non-zero exit, no
traceback (the real command in a subprocess); a trainer child whose parent dies exits quietly."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "npcadapt.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=90
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and lines[0].startswith("npcadapt")
    for word in words:
        assert word in lines[0], lines[0]


def test_port_out_of_range(tmp_path):
    proc = run_cli("serve", "--port", "99999", "--data", str(tmp_path / "d"), cwd=tmp_path)
    assert_one_line_error(proc, "port", "99999")


def test_port_in_use(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        proc = run_cli("serve", "--port", str(port), "--data", str(tmp_path / "d"), cwd=tmp_path)
    assert_one_line_error(proc, f"127.0.0.1:{port}", "in use")
    assert not (tmp_path / "d").exists()  # nothing started before the port was taken


def test_unwritable_data_dir(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")  # root ignores chmod; a file as parent stops anyone
    proc = run_cli("serve", "--port", "0", "--data", str(tmp_path / "a-file" / "data"), cwd=tmp_path)
    assert_one_line_error(proc, "a-file", "Not a directory")


def test_invalid_sim_setting(tmp_path):
    proc = run_cli("sim", "--episodes-per-update", "0", "--data", str(tmp_path / "d"), cwd=tmp_path)
    assert_one_line_error(proc, "--episodes-per-update", "0")


@pytest.mark.parametrize(
    "command, flag, value",
    [
        ("sim", "--lr", "-1"),
        ("serve", "--lr", "0"),
        ("demo", "--episodes-per-update", "0"),
        ("demo", "--lr", "nan"),
    ],
)
def test_invalid_online_setting_names_the_flag(tmp_path, command, flag, value):
    extra = ["--port", "0"] if command == "serve" else ["--headless", "--seconds", "1"] if command == "demo" else []
    proc = run_cli(command, *extra, flag, value, "--data", str(tmp_path / "d"), cwd=tmp_path)
    assert_one_line_error(proc, flag, value)
    assert not (tmp_path / "d").exists()  # refused before anything started


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--max-queued-rows", "-1"),
        ("--input-budget-mb", "nan"),
        ("--input-budget-mb", "inf"),
        ("--input-budget-mb", "0"),
        ("--threads", "-1"),
        ("--idle-timeout", "nan"),
        ("--batch-wait-ms", "-5"),
        ("--max-pending-feedback", "x"),
        ("--store", "http://127.0.0.1:6379/0"),
        ("--store", "redis://"),
        ("--lease-ttl", "0"),
    ],
)
def test_invalid_serve_value_names_the_flag(tmp_path, flag, value):
    proc = run_cli("serve", "--port", "0", flag, value, "--data", str(tmp_path / "d"), cwd=tmp_path)
    assert_one_line_error(proc, flag, value)
    assert not (tmp_path / "d").exists()


def test_a_config_error_names_the_flag_not_the_field(tmp_path):
    proc = run_cli("serve", "--port", "0", "--input-budget-mb", "1", "--data", str(tmp_path / "d"), cwd=tmp_path)
    assert_one_line_error(proc, "--input-budget-mb", "max_buffer_size")
    assert "input_budget_bytes" not in proc.stderr


def test_unparsable_flag_value(tmp_path):
    proc = run_cli("serve", "--input-budget-mb", "lots", cwd=tmp_path)
    assert_one_line_error(proc, "--input-budget-mb", "lots")


def test_the_trainer_child_exits_quietly_when_its_parent_dies_before_it_answers(tmp_path):
    script = textwrap.dedent("""
        import os
        from npcadapt.archetypes import BUILTIN_DIR, find_archetypes
        from npcadapt.training.online import OnlineConfig
        from npcadapt.training.trainer_process import TrainerProcess

        trainer = TrainerProcess(find_archetypes([BUILTIN_DIR]), OnlineConfig(), 8)
        print(trainer.pid, flush=True)
        os._exit(3)  # a parent that fails to start: gone before the child's set-up reply
    """)
    # stderr is a pipe the child inherits: run() returns once the child has exited too
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 3
    assert proc.stdout.strip().isdigit()
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_inspect_of_an_adapter_that_fails_validation_says_so(tmp_path, capsys):
    """A stored adapter whose header reads but whose numbers are damaged is quarantined on
    load; `inspect adapter` says the player gets the base instead of a traceback."""
    import npcadapt
    from npcadapt.cli import main

    svc = npcadapt.open(tmp_path / "data", seed=0, online=None, record=False)
    svc.engine.set_adapter("duelist", "p1", svc.engine.new_adapter("duelist", "p1"))
    svc.close()
    path = svc.engine.store.path_for("duelist", "p1")
    data = path.read_bytes()
    path.write_bytes(data[:-4] + b"\xff\xff\xff\xff")  # the last float becomes NaN; the header is intact
    code = main(["inspect", "adapter", "--archetype", "duelist", "--player", "p1", "--data", str(tmp_path / "data")])
    out = capsys.readouterr()
    assert code == 1
    assert "could not be loaded: they get the base policy" in out.out + out.err


def test_bench_adapt_out_that_is_a_file_is_refused_before_the_run(tmp_path):
    (tmp_path / "plot.png").write_bytes(b"")
    proc = run_cli("bench", "adapt", "--env", "npcadapt/Duel-v0", "--out", str(tmp_path / "plot.png"), cwd=tmp_path)
    assert_one_line_error(proc, "--out", "directory", "plot.png")
