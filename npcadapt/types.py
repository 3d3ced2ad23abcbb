"""Plain records shared across the engine, the bridge and the tools."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Decision:
    """One NPC decision for one player."""

    decision: int  # engine-wide id, used to attach feedback
    action: int
    action_name: str
    logp: float
    value: float
    entropy: float
    adapter_version: int  # 0 = base policy (no adapter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "action": self.action,
            "action_name": self.action_name,
            "logp": self.logp,
            "value": self.value,
            "entropy": self.entropy,
            "adapter_version": self.adapter_version,
        }


@dataclass(frozen=True)
class BatchDecision:
    """Decisions for N rows, as arrays (one entry per row, in request order)."""

    decision: np.ndarray  # (N,) int64
    action: np.ndarray  # (N,) int64
    logp: np.ndarray  # (N,) float32
    value: np.ndarray  # (N,) float32
    entropy: np.ndarray  # (N,) float32
    adapter_version: np.ndarray  # (N,) int64
    action_names: tuple[str, ...]  # the archetype's action names (index = action id)

    def __len__(self) -> int:
        return int(self.action.shape[0])

    def row(self, i: int) -> Decision:
        a = int(self.action[i])
        return Decision(
            decision=int(self.decision[i]),
            action=a,
            action_name=self.action_names[a],
            logp=float(self.logp[i]),
            value=float(self.value[i]),
            entropy=float(self.entropy[i]),
            adapter_version=int(self.adapter_version[i]),
        )

    def rows(self) -> list[Decision]:
        return [self.row(i) for i in range(len(self))]

    def to_dicts(self) -> list[dict[str, Any]]:
        """[Decision.to_dict() of every row], built column-wise (the bridge's hot path)."""
        names = self.action_names
        columns = zip(
            self.decision.tolist(),
            self.action.tolist(),
            self.logp.tolist(),
            self.value.tolist(),
            self.entropy.tolist(),
            self.adapter_version.tolist(),
        )
        return [
            {
                "decision": d,
                "action": a,
                "action_name": names[a],
                "logp": lp,
                "value": v,
                "entropy": e,
                "adapter_version": av,
            }
            for d, a, lp, v, e, av in columns
        ]


@dataclass(frozen=True)
class AdapterInfo:
    """What the engine knows about one player's adapter."""

    archetype: str
    player: str
    version: int
    updates: int
    base_hash: str
    rank: int
    resident: bool  # in the in-memory bank now
    stored: bool  # a file exists in the adapter store
    created: float
    updated: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
