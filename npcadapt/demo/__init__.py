"""The bundled pygame demo: a village whose NPCs adapt live to the person playing.

Modules, one job each: :mod:`rules` (observations and rewards per archetype),
:mod:`village` (the map), :mod:`world` (game state, no pygame), :mod:`bots` (scripted
players from the sim personas), :mod:`backend` (in-process Service or socket Client),
:mod:`session` (world <-> backend glue and HUD figures), :mod:`profiles` (names -> player
ids), :mod:`render` / :mod:`hud` / :mod:`screens` (pygame drawing), :mod:`options` (what a
run is asked to do, as plain values: ``npcadapt demo`` parses its flags into them) and
:mod:`app` (the loops). pygame is imported only by the drawing modules and app, and only
when the game starts.
"""

from __future__ import annotations

from .options import DemoOptions


def main(options: DemoOptions) -> int:
    """Run the demo with `options` (what ``npcadapt demo`` does); returns the exit status."""
    from .app import main as run

    return run(options)


__all__ = ["DemoOptions", "main"]
