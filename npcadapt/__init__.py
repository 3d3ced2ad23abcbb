"""npcadapt: per-player LoRA adaptation for game NPCs."""
