"""Durable small-file writes."""

from __future__ import annotations

import pytest

from npcadapt.fileio import write_atomic


def test_write_atomic_replaces_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "state.json"
    write_atomic(path, "old")
    write_atomic(path, b"new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp(tmp_path):
    path = tmp_path / "state.json"
    write_atomic(path, "old")
    with pytest.raises(TypeError):
        write_atomic(path, 42)  # not bytes or str: fails after the temp file exists
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_written_files_get_the_usual_permissions(tmp_path):
    """Mode 0644 less the umask, as open() gives, not the 0600 of a private temp file."""
    write_atomic(tmp_path / "state.json", "x")
    (tmp_path / "plain.json").write_text("x")
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == (tmp_path / "plain.json").stat().st_mode & 0o777
