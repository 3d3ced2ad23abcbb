"""The options of ``npcadapt demo`` (argparse only: building the CLI parser imports no pygame)."""

from __future__ import annotations

import argparse

from ..cli.common import add_online_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``npcadapt demo``."""
    p.add_argument("--profile", help="who is playing (skips the name prompt); headless default: 'bot <bot>'")
    p.add_argument("--data", default="data/demo", help="data directory: profiles, adapters and interaction logs")
    p.add_argument("--connect", metavar="HOST:PORT", help="play through a running `npcadapt serve` bridge")
    p.add_argument("--token", help="the bridge's token, if it has one")
    p.add_argument("--headless", action="store_true", help="no window: a scripted bot plays at full speed")
    p.add_argument("--bot", default="brawler", help="headless bot: a preset, a sim persona, or archetype=persona,...")
    p.add_argument("--seconds", type=float, default=60.0, help="headless: game seconds to play")
    p.add_argument("--screenshot", help="headless: save a PNG of the game here")
    p.add_argument("--json", dest="json_out", help="headless: write the summary as JSON here")
    p.add_argument("--realtime", action="store_true", help="headless: 60 frames/s wall clock, background updates")
    p.add_argument("--duelists", type=int, default=5, help="sparring partners in the ring (0-12)")
    p.add_argument("--merchants", type=int, default=2, help="market stalls (0-3)")
    p.add_argument("--companions", type=int, default=1, help="companions following the player (0-2)")
    p.add_argument("--hagglers", type=int, default=1, help="travelling traders haggling by the vault gate (0-2)")
    p.add_argument("--no-adapt", action="store_true", help="start with adaptation off (M toggles)")
    add_online_arguments(p)  # in-process play only; a bridge has its own
    p.set_defaults(episodes_per_update=2)  # a demo session lasts minutes: update often
    p.add_argument("--seed", type=int, default=0)
