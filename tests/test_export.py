"""Exports: ONNX checked against torch in onnxruntime, PEFT layout loaded back with PEFT."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import random_adapter, torch_forward

import npcadapt
from npcadapt.cli import main
from npcadapt.export import export_onnx, export_peft

ort = pytest.importorskip("onnxruntime")


@pytest.fixture
def engine(tmp_path):
    eng = npcadapt.Engine(tmp_path / "data")
    eng.set_adapter("duelist", "ann", random_adapter(eng, "duelist", "ann", scale=0.5))
    eng.flush()
    yield eng
    eng.close()


def _torch_outputs(engine, player, obs):
    rt = engine.runtime("duelist")
    slots = rt.bank.lookup([player] * len(obs)) if player else np.zeros(len(obs), np.int64)
    with torch.no_grad():
        logits, value = torch_forward(engine, "duelist").forward(torch.from_numpy(obs), slots)
    return logits.numpy(), value.numpy()


@pytest.mark.parametrize("player", ["ann", None])
def test_onnx_matches_torch(engine, tmp_path, player):
    path = export_onnx(engine, "duelist", player, tmp_path / "policy.onnx")
    session = ort.InferenceSession(str(path))
    obs = np.random.default_rng(0).random((17, 8), dtype=np.float32)  # a batch size not seen at export
    mask = np.ones((17, 8), bool)
    mask[::3, 2] = False
    logits, value = session.run(None, {"obs": obs, "mask": mask})
    want_logits, want_value = _torch_outputs(engine, player, obs)
    assert np.abs(np.where(mask, logits - want_logits, 0)).max() <= 1e-4
    assert np.isneginf(logits[::3, 2]).all()
    assert np.abs(value - want_value).max() <= 1e-4
    if player:
        base_logits, _ = _torch_outputs(engine, None, obs)
        assert np.abs(want_logits - base_logits).max() > 1e-2  # the adapter really is merged in


def test_peft_layout_loads_with_peft_and_matches(engine, tmp_path):
    peft = pytest.importorskip("peft")
    directory = export_peft(engine, "duelist", "ann", tmp_path / "peft")
    base = copy.deepcopy(engine.runtime("duelist").archetype.policy)
    model = peft.PeftModel.from_pretrained(base, str(directory))
    obs = np.random.default_rng(1).random((9, 8), dtype=np.float32)
    with torch.no_grad():
        logits, value = model(torch.from_numpy(obs))
    want_logits, want_value = _torch_outputs(engine, "ann", obs)
    assert np.abs(logits.numpy() - want_logits).max() <= 1e-5
    assert np.abs(value.numpy() - want_value).max() <= 1e-5


def test_export_commands(engine, tmp_path, capsys):
    data = str(engine.data_dir)
    assert (
        main(
            [
                "export",
                "onnx",
                "--archetype",
                "duelist",
                "--player",
                "ann",
                "--data",
                data,
                "--out",
                str(tmp_path / "a.onnx"),
            ]
        )
        == 0
    )
    assert (tmp_path / "a.onnx").stat().st_size > 1000
    assert (
        main(
            [
                "export",
                "peft",
                "--archetype",
                "duelist",
                "--player",
                "ann",
                "--data",
                data,
                "--out",
                str(tmp_path / "p"),
            ]
        )
        == 0
    )
    assert (tmp_path / "p" / "adapter_config.json").is_file()
    assert main(["export", "peft", "--archetype", "duelist", "--player", "nobody", "--data", data]) == 2
    assert "no duelist adapter" in capsys.readouterr().err
