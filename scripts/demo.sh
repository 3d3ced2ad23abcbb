#!/usr/bin/env bash
# Set up .venv if needed, then run the main job: the pygame demo, a village whose NPCs
# adapt to you. Without a display it runs headless with a scripted bot player and saves a
# screenshot. Extra arguments go to `npcadapt demo` (see `npcadapt demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/npcadapt demo "$@"
