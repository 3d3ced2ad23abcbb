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
