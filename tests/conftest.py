"""Shared fixtures: small seeded archetypes in temporary directories."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def arch_root(tmp_path):
    """A directory with one small archetype 'tiny' (obs 6, 4 actions, hidden 16x16)."""
    from npcadapt.archetypes import init_archetype

    root = tmp_path / "archetypes"
    init_archetype(
        root / "tiny",
        "tiny",
        [("pos", 2), ("health", 1), ("enemy", 3)],
        ["wait", "attack", "block", "flee"],
        hidden=(16, 16),
        rank=4,
        alpha=8.0,
        seed=1,
    )
    return root


@pytest.fixture
def engine(tmp_path, arch_root):
    from npcadapt.engine import Engine

    eng = Engine(tmp_path / "data", archetype_dirs=[arch_root], capacity=8, seed=0)
    yield eng
    eng.close()


def torch_forward(engine, archetype: str):
    """An eager torch forward over the archetype's bank: the reference for the engine's own
    (``.forward(obs tensor, slots)`` gives torch tensors)."""
    from npcadapt.lora.forward import TorchForward

    rt = engine.runtime(archetype)
    return TorchForward(rt.policy, rt.layout, rt.bank)


def random_adapter(engine, archetype: str, player: str, scale: float = 0.3, seed: int = 0) -> dict:
    """An adapter with non-zero B so it really changes the policy."""
    gen = torch.Generator().manual_seed(seed)
    tensors = engine.new_adapter(archetype, player, seed=seed)
    for name, t in tensors.items():
        if name.endswith("lora_B"):
            tensors[name] = torch.randn(t.shape, generator=gen) * scale
    return tensors


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server on a free loopback port for the session (tests/redis_helpers.py);
    skips naming the Debian package where it is missing (fails in CI)."""
    from redis_helpers import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """The session's Redis, emptied for this test."""
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url
