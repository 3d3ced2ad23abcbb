"""Archetype definitions: TOML round trip, weights hash, validation, init."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from npcadapt.archetypes import BUILTIN_DIR, find_archetypes, init_archetype, load_archetype, weights_hash
from npcadapt.config import ArchetypeSpec
from npcadapt.errors import ArchetypeError


def test_init_writes_a_loadable_definition(arch_root):
    arch = load_archetype(arch_root / "tiny")
    spec = arch.spec
    assert spec.obs_dim == 6 and spec.n_actions == 4
    assert [f.name for f in spec.observation] == ["pos", "health", "enemy"]
    assert spec.lora.targets == ("actor.0", "actor.1", "actor.2")
    assert spec.trained is False
    logits, value = arch.policy(torch.zeros(2, 6))
    assert logits.shape == (2, 4) and value.shape == (2,)
    assert not any(p.requires_grad for p in arch.policy.parameters())
    desc = arch.describe()
    assert desc["version"] == arch.base_hash and sum(o["size"] for o in desc["observation"]) == 6


def test_toml_round_trip(arch_root):
    spec = load_archetype(arch_root / "tiny").spec
    again = ArchetypeSpec.from_dict(__import__("tomllib").loads(spec.to_toml()))
    assert again == spec


def test_hash_is_content_hash(arch_root, tmp_path):
    arch = load_archetype(arch_root / "tiny")
    assert arch.base_hash == weights_hash(arch.policy.state_dict())
    path = arch_root / "tiny" / "base.safetensors"
    state = load_file(path)
    save_file(state, path, metadata={"note": "metadata does not change the version"})
    assert load_archetype(arch_root / "tiny").base_hash == arch.base_hash
    state["actor.0.bias"] = state["actor.0.bias"] + 1e-3
    save_file(state, path)
    assert load_archetype(arch_root / "tiny").base_hash != arch.base_hash


def test_same_seed_same_weights(tmp_path):
    a = init_archetype(tmp_path / "a", "x", [("o", 3)], ["l", "r"], seed=5)
    b = init_archetype(tmp_path / "b", "x", [("o", 3)], ["l", "r"], seed=5)
    c = init_archetype(tmp_path / "c", "x", [("o", 3)], ["l", "r"], seed=6)
    assert a.base_hash == b.base_hash != c.base_hash


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"actions": ["only"]}, "at least two actions"),
        ({"actions": ["a", "a"]}, "unique"),
        ({"name": "Bad Name"}, "name"),
        ({"name": "tiny\n"}, "name"),  # "$" alone would accept a trailing newline
        ({"lora": {"rank": 0, "targets": ["actor.0"]}}, "lora.rank"),
        ({"lora": {"rank": 4, "targets": ["actor.9"]}}, "unknown layers"),
        ({"network": {"hidden": [], "activation": "tanh"}}, "network.hidden"),
        ({"network": {"hidden": [8], "activation": "gelu"}}, "network.activation"),
        ({"weights": "../evil.safetensors"}, "weights"),
    ],
)
def test_bad_definitions_name_the_field(arch_root, patch, message):
    data = load_archetype(arch_root / "tiny").spec.to_dict()
    data.update(patch)
    with pytest.raises(ArchetypeError, match=message):
        ArchetypeSpec.from_dict(data)


def test_bad_files_give_clear_errors(arch_root):
    toml = arch_root / "tiny" / "archetype.toml"
    text = toml.read_text()
    toml.write_text("name = [broken")
    with pytest.raises(ArchetypeError, match="not valid TOML"):
        load_archetype(arch_root / "tiny")
    toml.write_text(text)
    weights = arch_root / "tiny" / "base.safetensors"
    weights.write_bytes(b"\x00garbage")
    with pytest.raises(ArchetypeError, match="cannot read weights"):
        load_archetype(arch_root / "tiny")
    weights.unlink()
    with pytest.raises(ArchetypeError, match="missing"):
        load_archetype(arch_root / "tiny")


def test_weights_that_do_not_fit_are_refused(arch_root):
    path = arch_root / "tiny" / "base.safetensors"
    state = load_file(path)
    state["actor.0.weight"] = torch.zeros(16, 99)
    save_file(state, path)
    with pytest.raises(ArchetypeError, match="wrong shape"):
        load_archetype(arch_root / "tiny")


def test_init_refuses_to_overwrite(arch_root):
    with pytest.raises(ArchetypeError, match="already exists"):
        init_archetype(arch_root / "tiny", "tiny", [("o", 1)], ["a", "b"])


def test_builtin_archetypes_load():
    found = find_archetypes([BUILTIN_DIR])
    assert {"duelist", "companion", "merchant"} <= set(found)
    for arch in found.values():
        assert arch.spec.obs_dim == sum(f.size for f in arch.spec.observation)


def test_user_directory_overrides_by_name(arch_root, tmp_path):
    init_archetype(tmp_path / "more" / "tiny", "tiny", [("o", 2)], ["a", "b", "c"], seed=3)
    found = find_archetypes([arch_root, tmp_path / "more"])
    assert found["tiny"].spec.obs_dim == 2
    with pytest.raises(ArchetypeError, match="does not exist"):
        find_archetypes([tmp_path / "nope"])


def test_shipped_bases_are_trained_by_the_train_command():
    import json

    for arch in find_archetypes([BUILTIN_DIR]).values():
        assert arch.spec.trained, f"{arch.name} ships untrained weights"
        result = json.loads((arch.directory / "train_result.json").read_text())
        assert result["base_hash"] == arch.base_hash, f"{arch.name}: weights changed after training"
        assert (arch.directory / "train_config.toml").is_file()
