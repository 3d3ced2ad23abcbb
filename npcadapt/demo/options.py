"""What ``npcadapt demo`` is asked to do, as plain values.

The command line (:mod:`npcadapt.cli.demo`) parses the flags into a :class:`DemoOptions`;
the demo itself knows nothing of argparse. Its defaults are the flags' defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..training.online import OnlineConfig


@dataclass(frozen=True)
class DemoOptions:
    """Options of one demo run (window or headless)."""

    profile: str | None = None  # who is playing (skips the name prompt); headless default: 'bot <bot>'
    data: str = "data/demo"  # data directory: profiles, adapters and interaction logs
    connect: str | None = None  # HOST:PORT of a running `npcadapt serve` bridge to play through
    token: str | None = None  # the bridge's token, if it has one
    headless: bool = False  # no window: a scripted bot plays at full speed
    bot: str = "brawler"  # headless bot: a preset, a sim persona, or archetype=persona,...
    seconds: float = 60.0  # headless: game seconds to play
    screenshot: str | None = None  # headless: save a PNG of the game here
    json_out: str | None = None  # headless: write the summary as JSON here
    realtime: bool = False  # headless: 60 frames/s wall clock, background updates
    duelists: int = 5  # sparring partners in the ring (0-12)
    merchants: int = 2  # market stalls (0-3)
    companions: int = 1  # companions following the player (0-2)
    hagglers: int = 1  # travelling traders haggling by the vault gate (0-2)
    adapt: bool = True  # False: start with adaptation off (M toggles)
    # in-process play only (a bridge has its own); a demo session lasts minutes: update often
    online: OnlineConfig = field(default_factory=lambda: OnlineConfig(episodes_per_update=2))
    seed: int = 0
