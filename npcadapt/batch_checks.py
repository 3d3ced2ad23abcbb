"""Checks of what a batch brings (observations, masks, greedy flags) and of the logits it
drives the policy to: inputs in, C-contiguous numpy out, or an InvalidInputError naming
the bad rows."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from .errors import InvalidInputError


def check_obs(obs: npt.ArrayLike | torch.Tensor, n: int, obs_dim: int) -> np.ndarray:
    """(n, obs_dim) finite numbers -> C-contiguous float32 (N, D)."""
    if n == 0:
        raise InvalidInputError("a batch needs at least one row")
    try:
        arr = obs.detach().cpu().numpy() if isinstance(obs, torch.Tensor) else np.asarray(obs, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"obs must be numbers: {exc}") from None
    if arr.dtype.kind not in "fiub":
        raise InvalidInputError(f"obs must be numbers, got dtype {arr.dtype}")
    if arr.shape != (n, obs_dim):
        raise InvalidInputError(f"obs must have shape ({n}, {obs_dim}) (rows, observation length), got {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))[:5].tolist()
        raise InvalidInputError(f"obs rows {bad} contain NaN or infinite values")
    return np.ascontiguousarray(arr)


def check_masks(masks: npt.ArrayLike | torch.Tensor | None, n: int, n_actions: int) -> np.ndarray | None:
    """None, or (n, n_actions) booleans with at least one allowed action per row."""
    if masks is None:
        return None
    arr = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if arr.shape != (n, n_actions):
        raise InvalidInputError(f"mask must have shape ({n}, {n_actions}) (rows, actions), got {arr.shape}")
    if arr.dtype != np.bool_:
        if arr.dtype.kind not in "iub" or not np.isin(arr, (0, 1)).all():
            raise InvalidInputError(f"mask must hold booleans, got dtype {arr.dtype}")
        arr = arr.astype(bool)
    empty = ~arr.any(axis=1)
    if empty.any():
        raise InvalidInputError(f"mask rows {np.flatnonzero(empty)[:5].tolist()} allow no action")
    return arr


def check_greedy(greedy: npt.ArrayLike, n: int) -> np.ndarray | None:
    """A bool for every row or (n,) bools -> (N,) bool, or None when no row is greedy."""
    if isinstance(greedy, (bool, np.bool_)):
        return np.ones(n, dtype=bool) if greedy else None
    arr = np.asarray(greedy)
    if arr.shape != (n,) or arr.dtype != np.bool_:
        raise InvalidInputError(f"greedy must be a bool or {n} bools, got {arr.dtype} {arr.shape}")
    return arr if arr.any() else None


def single_row(
    obs: npt.ArrayLike | torch.Tensor, mask: npt.ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """One observation (and optional mask) as a batch of one row: (1, D) and (1, A)."""
    try:
        arr = obs.detach().cpu().numpy() if isinstance(obs, torch.Tensor) else np.asarray(obs, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"obs must be a flat list of numbers: {exc}") from None
    if arr.ndim != 1:
        raise InvalidInputError(f"obs must be a flat list of numbers, got shape {arr.shape}")
    return arr[None], None if mask is None else np.asarray(mask)[None]


def check_logits(logits: np.ndarray) -> None:
    """Finite observations can still overflow the network (e.g. 3e38): refuse, never sample from NaN."""
    if not np.isfinite(logits).all():
        bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))[:5].tolist()
        raise InvalidInputError(f"obs rows {bad} drive the policy to non-finite logits (values far out of range?)")
