#!/usr/bin/env bash
# Set up .venv if needed, then run the main job: a short simulation where each NPC
# adapts to its own simulated player. Extra arguments go to `npcadapt sim`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/npcadapt sim --env npcadapt/Duel-v0 --players 32 --episodes 120 \
  --data data/demo-sim --out runs/demo-sim "$@"
