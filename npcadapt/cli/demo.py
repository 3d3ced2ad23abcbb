"""`npcadapt demo`: the flags of the pygame demo, parsed into :class:`~npcadapt.demo.DemoOptions`.

Building the parser imports no pygame; the demo gets its options as plain values.
"""

from __future__ import annotations

import argparse

from ..demo.options import DemoOptions
from .common import add_online_arguments, online_config

_DEFAULTS = DemoOptions()


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``npcadapt demo``, read back by :func:`demo_options`."""
    p.add_argument("--profile", help="who is playing (skips the name prompt); headless default: 'bot <bot>'")
    p.add_argument("--data", default=_DEFAULTS.data, help="data directory: profiles, adapters and interaction logs")
    p.add_argument("--connect", metavar="HOST:PORT", help="play through a running `npcadapt serve` bridge")
    p.add_argument("--token", help="the bridge's token, if it has one")
    p.add_argument("--headless", action="store_true", help="no window: a scripted bot plays at full speed")
    p.add_argument(
        "--bot", default=_DEFAULTS.bot, help="headless bot: a preset, a sim persona, or archetype=persona,..."
    )
    p.add_argument("--seconds", type=float, default=_DEFAULTS.seconds, help="headless: game seconds to play")
    p.add_argument("--screenshot", help="headless: save a PNG of the game here")
    p.add_argument("--json", dest="json_out", help="headless: write the summary as JSON here")
    p.add_argument("--realtime", action="store_true", help="headless: 60 frames/s wall clock, background updates")
    p.add_argument("--duelists", type=int, default=_DEFAULTS.duelists, help="sparring partners in the ring (0-12)")
    p.add_argument("--merchants", type=int, default=_DEFAULTS.merchants, help="market stalls (0-3)")
    p.add_argument("--companions", type=int, default=_DEFAULTS.companions, help="companions following the player (0-2)")
    p.add_argument(
        "--hagglers", type=int, default=_DEFAULTS.hagglers, help="travelling traders haggling by the vault gate (0-2)"
    )
    p.add_argument("--no-adapt", action="store_true", help="start with adaptation off (M toggles)")
    add_online_arguments(p)  # in-process play only; a bridge has its own
    p.set_defaults(
        episodes_per_update=_DEFAULTS.online.episodes_per_update
    )  # a demo session lasts minutes: update often
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed)


def demo_options(args: argparse.Namespace) -> DemoOptions:
    """The parsed flags of ``npcadapt demo`` as plain values; InvalidInputError naming a bad online flag."""
    return DemoOptions(
        profile=args.profile,
        data=args.data,
        connect=args.connect,
        token=args.token,
        headless=args.headless,
        bot=args.bot,
        seconds=args.seconds,
        screenshot=args.screenshot,
        json_out=args.json_out,
        realtime=args.realtime,
        duelists=args.duelists,
        merchants=args.merchants,
        companions=args.companions,
        hagglers=args.hagglers,
        adapt=not args.no_adapt,
        online=online_config(args),
        seed=args.seed,
    )


def _cmd_demo(args) -> int:
    from ..demo import main

    return main(demo_options(args))


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="play the pygame demo: a village whose NPCs adapt to you (--headless: a bot plays)")
    add_demo_arguments(p)
    p.set_defaults(func=_cmd_demo)
