"""npcadapt: NPCs that adapt to each player with per-player LoRA adapters.

    import npcadapt
    svc = npcadapt.open("data")                       # built-in archetypes
    d = svc.act("duelist", "player-42", obs, npc="sparring-1")
    svc.feedback("player-42", "sparring-1", reward=1.0, done=True)
    svc.train_pending()                               # or svc.start_background_training()
    svc.close()
"""

from .engine import Engine
from .errors import NpcAdaptError
from .service import Service, open
from .training.online import OnlineConfig
from .types import AdapterInfo, BatchDecision, Decision

__all__ = ["Engine", "Service", "open", "OnlineConfig", "NpcAdaptError", "AdapterInfo", "BatchDecision", "Decision"]
__version__ = "0.1.0"
