"""npcadapt: NPCs that adapt to each player with per-player LoRA adapters.

import npcadapt
svc = npcadapt.open("data")                       # built-in archetypes
d = svc.act("duelist", "player-42", obs, npc="sparring-1")
svc.feedback("player-42", "sparring-1", reward=1.0, done=True)
svc.train_pending()                               # or svc.start_background_training()
svc.close()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import NpcAdaptError

if TYPE_CHECKING:
    from .engine import Engine
    from .service import Service, open
    from .training.online import OnlineConfig
    from .types import AdapterInfo, BatchDecision, Decision

# Loaded on first use (PEP 562), so a game-side process that imports only npcadapt.client
# (a bridge client) never loads torch.
_LAZY = {
    "Engine": ".engine",
    "Service": ".service",
    "open": ".service",
    "OnlineConfig": ".training.online",
    "AdapterInfo": ".types",
    "BatchDecision": ".types",
    "Decision": ".types",
}

__all__ = ["AdapterInfo", "BatchDecision", "Decision", "Engine", "NpcAdaptError", "OnlineConfig", "Service", "open"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'npcadapt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value
