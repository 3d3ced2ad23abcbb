"""A population prior on disk: one safetensors file beside the archetype, bound to its base.

:func:`save_library` writes it atomically; :func:`load_library` refuses a library built on
another base (stale, like an adapter) and a damaged file with the reason: tensors of the
wrong shape, non-finite numbers, covariances that could not be factorised, hostile
metadata; :func:`find_library` is what the Service and the demo call.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import cast

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from ..archetypes import Archetype
from ..errors import AdapterMismatchError, StoreError
from ..fileio import write_atomic
from .library import Library, widening_of

log = logging.getLogger(__name__)

LIBRARY_NAME = "population_prior.safetensors"
MAX_WIDENING = 1e6  # a cohort covariance divided by more could underflow in the trust test
# the variances a stored covariance may hold: outside, inverting it in float64 loses the data's
# scale (the shipped priors hold 8e-6 to 2)
MIN_VARIANCE, MAX_VARIANCE = 1e-9, 1e3


def save_library(library: Library, path: str | Path) -> Path:
    """Write the library (float32 tensors, metadata: archetype, base hash, settings) atomically."""
    path = Path(path)
    tensors = {
        "basis": library.basis.contiguous(),
        "mean": library.mean.contiguous(),
        "cov": library.cov.contiguous(),
        "log_weights": library.log_weights.contiguous(),
    }  # float64: the posteriors invert these
    tensors.update({f"transfer.{name}": matrix.contiguous() for name, matrix in library.transfer.items()})
    if library.member_spread is not None:
        tensors["member_spread"] = library.member_spread.contiguous()
    metadata = {
        "archetype": library.archetype,
        "base_hash": library.base_hash,
        "noise_var": repr(library.noise_var),
        "beta": repr(library.beta),
        "gamma": repr(library.gamma),
        "explore_spread": repr(library.explore_spread),
        "trust_t_open": repr(library.trust_t_open),
        "trust_t_full": repr(library.trust_t_full),
        "meta": json.dumps(library.meta),
        "transfer_from": json.dumps(library.transfer_from),
    }
    write_atomic(path, save(tensors, metadata=metadata))
    return path


def load_library(path: str | Path, archetype: Archetype) -> Library:
    """Read a library for `archetype`; refuses one built on another base or a damaged file."""
    path = Path(path)
    try:
        tensors = load_file(path)
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
    except FileNotFoundError:
        raise StoreError(f"population prior {path} does not exist") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise StoreError(f"population prior {path} cannot be read: {exc}") from None
    if metadata.get("archetype") != archetype.name or metadata.get("base_hash") != archetype.base_hash:
        raise AdapterMismatchError(
            f"population prior {path} was built for {metadata.get('archetype')!r} version "
            f"{metadata.get('base_hash')!r}, not {archetype.name!r} version {archetype.base_hash!r}: rebuild it "
            "with `npcadapt train library`"
        )
    last = cast(torch.nn.Linear, archetype.policy.actor[-1])  # the actor is a ModuleList of Linears
    n_actions, hidden = last.out_features, last.in_features
    basis, mean, cov, log_w = (tensors.get(k) for k in ("basis", "mean", "cov", "log_weights"))
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if basis is None or mean is None or cov is None or log_w is None or basis.ndim != 2 or mean.ndim != 3:
        raise StoreError(f"population prior {path} has tensors {shapes}; expected basis, mean, cov and log_weights")
    k, d = mean.shape[0], basis.shape[0]
    if (
        tuple(basis.shape) != (d, hidden)
        or tuple(mean.shape) != (k, n_actions, d)
        or tuple(cov.shape) != (k, n_actions, d, d)
        or tuple(log_w.shape) != (k,)
    ):
        raise StoreError(
            f"population prior {path} has tensors {shapes} that do not fit {archetype.name} "
            f"({n_actions} actions, {hidden} hidden)"
        )
    try:
        numbers = {key: float(metadata[key]) for key in ("noise_var", "beta", "gamma")}
        numbers["explore_spread"] = float(metadata.get("explore_spread", "0"))  # absent: written before it existed
        trust_t = (float(metadata.get("trust_t_open", "1")), float(metadata.get("trust_t_full", "4")))  # likewise
        meta = json.loads(metadata.get("meta", "{}"))
        widening = widening_of(meta)  # checked here: the trust test divides by it
        transfer_from = {str(k): str(v) for k, v in json.loads(metadata.get("transfer_from", "{}")).items()}
    except (KeyError, ValueError, AttributeError, TypeError) as exc:
        raise StoreError(f"population prior {path} has damaged metadata: {exc}") from None
    transfer: dict[str, torch.Tensor] = {}
    for name in transfer_from:
        matrix = tensors.get(f"transfer.{name}")
        if matrix is None or matrix.ndim != 2 or matrix.shape[1] != k or not torch.isfinite(matrix).all():
            raise StoreError(
                f"population prior {path}: transfer matrix from {name!r} is missing or does not fit {k} cohorts"
            )
        transfer[name] = matrix
    spread = tensors.get("member_spread")  # absent: written before it was stored
    if spread is not None and (tuple(spread.shape) != tuple(cov.shape) or not _is_covariance(spread)):
        raise StoreError(
            f"population prior {path}: member_spread {tuple(spread.shape)} is not {k} symmetric positive "
            f"semi-definite ({n_actions}, {d}, {d}) covariances"
        )
    if (
        not all(torch.isfinite(t).all() for t in (basis, mean, cov, log_w))
        or not all(np.isfinite(v) and v >= 0 for v in numbers.values())
        or numbers["noise_var"] <= 0
    ):
        raise StoreError(f"population prior {path} holds non-finite or negative numbers")
    if not (np.isfinite(trust_t).all() and trust_t[1] > trust_t[0]):
        raise StoreError(f"population prior {path}: trust thresholds {trust_t} are not finite with full > open")
    if not 1 <= widening <= MAX_WIDENING:  # NaN fails too
        raise StoreError(
            f"population prior {path}: widening (config inflate) {widening} is not in [1, {MAX_WIDENING:g}]"
        )
    measured = cov.double() / widening if spread is None else cov.double() / widening + spread.double()
    factored = {"cov": cov.double(), "cov / widening" + ("" if spread is None else " + member_spread"): measured}
    for name, matrices in factored.items():  # what the posteriors and the trust test factorise and invert
        eigenvalues = torch.linalg.eigvalsh(matrices)  # (K, A, d)
        if not bool(((eigenvalues >= MIN_VARIANCE) & (eigenvalues <= MAX_VARIANCE)).all()):
            raise StoreError(
                f"population prior {path}: {name} has variances from {float(eigenvalues.min()):.3g} to "
                f"{float(eigenvalues.max()):.3g}, outside [{MIN_VARIANCE:g}, {MAX_VARIANCE:g}]"
            )
    return Library(
        archetype.name,
        archetype.base_hash,
        basis.double(),
        mean.double(),
        cov.double(),
        log_w.double(),
        numbers["noise_var"],
        numbers["beta"],
        numbers["gamma"],
        meta,
        {name: m.double() for name, m in transfer.items()},
        transfer_from,
        numbers["explore_spread"],
        None if spread is None else spread.double(),
        *trust_t,
    )


def _is_covariance(matrices: torch.Tensor) -> bool:
    """Whether every matrix of (..., d, d) is finite, symmetric and positive semi-definite."""
    m = matrices.double()
    if not torch.isfinite(m).all() or not torch.allclose(m, m.mT, atol=1e-9, rtol=1e-6):
        return False
    scale = float(m.abs().max()) if m.numel() else 0.0
    return bool((torch.linalg.eigvalsh(m) >= -1e-9 * max(scale, 1e-30)).all())


def find_library(archetype: Archetype) -> Library | None:
    """The population prior stored beside `archetype`, if there is a usable one.

    A missing file is None; a stale or damaged one is refused (logged with the reason and
    the command that rebuilds it) and the archetype adapts without a prior.
    """
    path = archetype.directory / LIBRARY_NAME
    if not path.exists():
        return None
    try:
        return load_library(path, archetype)
    except (StoreError, AdapterMismatchError) as exc:
        log.warning("not using the population prior: %s", exc)
        return None
