"""Benchmark: batched mixed-adapter inference on the reference workload.

Workload: observation 64 floats, hidden 128x128, 16 actions, LoRA rank 8 on every actor
Linear; `resident` players with adapters in the bank; a batch of `rows` rows from
`rows` distinct players drawn from them. Every figure is a ratio against a reference
measured in the same process (see docs/benchmarks.md).
"""

from __future__ import annotations

import gc
import json
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..adapter_meta import AdapterMeta
from ..engine import ArchetypeRuntime, Engine
from ..lora.forward import TorchForward
from .common import median_seconds, read_bandwidth, reference_archetype, rss_bytes


def _meta(engine: Engine) -> AdapterMeta:
    """One real metadata record shared by every benchmark adapter (the bank reads `version`)."""
    arch = engine.runtime("reference").archetype
    lora = arch.spec.lora
    return AdapterMeta(
        archetype="reference",
        player="bench",
        base_hash=arch.base_hash,
        rank=lora.rank,
        alpha=float(lora.alpha),
        rslora=lora.rslora,
        version=1,
        updates=0,
        created=0.0,
        updated=0.0,
        dtype=engine.adapter_dtype,
    )


def _fill(engine: Engine, n: int, seed: int) -> list[str]:
    """Give n players random (non-zero) adapters directly in the bank."""
    rt = engine.runtime("reference")
    gen = torch.Generator().manual_seed(seed)
    players = [f"player-{i}" for i in range(n)]
    flats = torch.randn(n, rt.layout.size, generator=gen) * 0.05
    meta = _meta(engine)
    for player, flat in zip(players, flats):
        rt.bank.put(player, flat, meta, dirty=False)
    return players


def _kernel(rt: ArchetypeRuntime) -> TorchForward:
    """The torch forward: the runtime's own where it runs torch (compile=True, CUDA), else
    an eager one over the same bank (on CPU act_batch runs the numpy forward instead)."""
    return rt.forward if isinstance(rt.forward, TorchForward) else TorchForward(rt.policy, rt.layout, rt.bank)


def _per_player_loop(kernel: TorchForward, slots: np.ndarray, obs: torch.Tensor) -> None:
    """Naive reference: one single-adapter forward per player (how PEFT's mixed batch loops)."""
    with torch.inference_mode():
        for i in range(len(slots)):
            kernel.forward(obs[i : i + 1], slots[i : i + 1])


VARIANTS = {
    ("float32", False): "",
    ("bfloat16", False): "bf16_",
    ("float32", True): "compiled_",
    ("bfloat16", True): "compiled_bf16_",
}


def run(
    rows: int = 1024,
    resident: int = 10_000,
    repeats: int = 30,
    seed: int = 0,
    memory_players: int = 100_000,
    compile: bool = False,
) -> dict:
    rng = np.random.default_rng(seed)
    tmp = Path(tempfile.mkdtemp(prefix="npcadapt-bench-"))
    reference_archetype(tmp / "arch", seed=seed)
    obs_np = rng.standard_normal((rows, 64)).astype(np.float32)
    obs = torch.from_numpy(obs_np)
    result: dict = {"benchmark": "inference", "rows": rows, "resident": resident, "threads": torch.get_num_threads()}
    logits_by_dtype = {}
    batch_index = rng.choice(resident, size=rows, replace=False)
    for (dtype, compiled), prefix in VARIANTS.items():
        if compiled and not compile:
            continue
        engine = Engine(
            tmp / f"data-{prefix}",
            archetype_dirs=[tmp / "arch"],
            capacity=resident,
            adapter_dtype=dtype,
            compile=compiled,
        )
        players = _fill(engine, resident, seed)
        batch = [players[i] for i in batch_index]
        rt = engine.runtime("reference")
        t_batched = median_seconds(partial(engine.act_batch, "reference", batch, obs_np), repeats)
        slots = rt.bank.lookup(batch)
        assert slots is not None  # may_load=True (the default): it loads, never asks to retry
        kernel = _kernel(rt)
        with torch.inference_mode():
            t_kernel = median_seconds(partial(kernel.forward, obs, slots), repeats)
            logits_by_dtype[prefix] = kernel.forward(obs, slots)[0]
        nobody = [f"new-{i}" for i in range(rows)]
        t_base = median_seconds(partial(engine.act_batch, "reference", nobody, obs_np), repeats)
        one = [players[0]] * rows
        t_single = median_seconds(partial(engine.act_batch, "reference", one, obs_np), repeats)
        bank_bytes = rt.bank.storage.numel() * rt.bank.storage.element_size()
        row_bytes = rt.layout.size * rt.bank.storage.element_size()
        bandwidth = read_bandwidth(bank_bytes)
        floor = rows * row_bytes / bandwidth
        result.update(
            {
                f"{prefix}decisions_per_s": round(rows / t_batched),
                f"{prefix}kernel_decisions_per_s": round(rows / t_kernel),
                f"{prefix}ratio_vs_base": round(t_batched / t_base, 3),
                f"{prefix}single_adapter_ratio_vs_base": round(t_single / t_base, 3),
                f"{prefix}floor_ratio": round(t_batched / floor, 3),
                f"{prefix}kernel_floor_ratio": round(t_kernel / floor, 3),
                f"{prefix}adapter_bytes": row_bytes,
                f"{prefix}read_bandwidth_gb_s": round(bandwidth / 1e9, 2),  # the floor ratios' own reading
            }
        )
        if prefix == "":
            loop_slots = slots[: min(rows, 256)]
            t_loop = median_seconds(partial(_per_player_loop, kernel, loop_slots, obs), max(3, repeats // 10), 1)
            result["speedup_vs_loop"] = round((t_loop / len(loop_slots) * rows) / t_batched, 1)
        engine.close()
        del engine, rt, kernel
        gc.collect()
    reference = logits_by_dtype[""]
    for prefix, logits in logits_by_dtype.items():
        if prefix:
            result[f"{prefix}max_abs_logit_diff"] = float((reference - logits).abs().max())
            result[f"{prefix}greedy_agreement"] = float((reference.argmax(-1) == logits.argmax(-1)).float().mean())
    if memory_players:
        result.update(_memory(tmp, memory_players, seed))
    return result


def _memory(tmp: Path, n: int, seed: int) -> dict:
    """Resident cost of n adapters (bf16) relative to their raw bytes."""
    gc.collect()
    before = rss_bytes()
    engine = Engine(tmp / "data-mem", archetype_dirs=[tmp / "arch"], capacity=n, adapter_dtype="bfloat16")
    rt = engine.runtime("reference")
    rt.bank.storage.fill_(0.01)  # touch every page so RSS counts it
    meta = _meta(engine)
    for i in range(n):
        rt.bank.put(f"player-{i}", rt.bank.storage[0], meta, dirty=False)
    after = rss_bytes()
    raw = n * rt.layout.size * 2
    engine.close()
    return {"memory_players": n, "memory_ratio_vs_raw": round((after - before) / raw, 3)}


if __name__ == "__main__":
    print(json.dumps(run()))
