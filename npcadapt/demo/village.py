"""The village map: size, zones (ring, market, vault), stalls, terrain tiles and decorations.

30 x 20 tiles of 32 px: a sand sparring ring on the left, a cobbled market with stalls at
the top right, a treasure vault at the bottom right, dirt paths between, a pond and trees.
Travelling traders (hagglers) spread their rugs on either side of the vault gate.
Plain data and geometry; no pygame.
"""

from __future__ import annotations

import math

import numpy as np

TILE = 32
COLS, ROWS = 30, 20
WIDTH, HEIGHT = COLS * TILE, ROWS * TILE
ARENA = (8.5 * TILE, 10.0 * TILE, 6.3 * TILE)  # centre x, centre y, radius (px)
MARKET = (17 * TILE, 0, 13 * TILE, 8 * TILE)  # x, y, w, h (px)
VAULT = (21 * TILE, 13 * TILE, 9 * TILE, 7 * TILE)
SPAWN = (17.0 * TILE, 10.5 * TILE)
STALL_X = (600.0, 730.0, 860.0)  # stall centres; the customer stands below the counter
STALL_TOP = 40.0
STALL_REACH = 52.0
HAGGLE_SPOTS = ((896.0, 298.0), (704.0, 298.0))  # where each haggler stands, behind its rug by the vault gate
HAGGLE_FRONT = 74.0  # the customer stands this far below the trader, across the rug


def terrain() -> list[str]:
    """Tile codes per row: g grass, s sand, c cobble, d dirt, v vault floor, w wall, ~ water."""
    grid = [["g"] * COLS for _ in range(ROWS)]
    cx, cy, r = ARENA
    for y in range(ROWS):
        for x in range(COLS):
            if math.hypot((x + 0.5) * TILE - cx, (y + 0.5) * TILE - cy) < r + 6:
                grid[y][x] = "s"
    for y in range(8):
        for x in range(17, COLS):
            grid[y][x] = "c"
    for y in range(13, ROWS):
        for x in range(21, COLS):
            grid[y][x] = "v"
    for x in range(21, COLS):
        grid[12][x] = "w"
    for x in range(14, 26):
        grid[10][x] = grid[11][x] = "d" if grid[10][x] == "g" else grid[10][x]
    for y in range(8, 13):
        grid[y][24] = grid[y][25] = "d"
    for y, x in ((1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3), (2, 4), (3, 2), (3, 3)):
        grid[y][x] = "~"
    return ["".join(row) for row in grid]


# Decorations (kind, x, y): x, y is the bottom centre in px.
DECOR = (
    [
        ("tree", (tx + 0.5) * TILE, (ty + 1) * TILE)
        for tx, ty in (
            (6, 1),
            (9, 0),
            (12, 1),
            (15, 2),
            (0, 6),
            (0, 13),
            (1, 18),
            (4, 19),
            (8, 19),
            (12, 19),
            (16, 17),
            (19, 19),
            (17, 14),
            (15, 5),
            (19, 8),
            (19, 12),
        )
    ]
    + [("bush", (tx + 0.5) * TILE, (ty + 1) * TILE) for tx, ty in ((5, 3), (14, 14), (18, 16), (16, 8), (2, 16))]
    + [
        ("post", ARENA[0] + math.cos(a) * (ARENA[2] + 8), ARENA[1] + math.sin(a) * (ARENA[2] + 8) + 10)
        for a in np.linspace(0, 2 * math.pi, 12, endpoint=False)
    ]
    + [("chest", x, y) for x, y in ((760.0, 470.0), (840.0, 470.0), (920.0, 520.0), (760.0, 600.0))]
    + [("barrel", x, y) for x, y in ((560.0, 230.0), (930.0, 230.0), (700.0, 600.0), (944.0, 600.0))]
    + [("crate", x, y) for x, y in ((580.0, 236.0), (912.0, 236.0), (566.0, 206.0), (728.0, 616.0))]
    + [("well", 730.0, 224.0)]
    + [("rug", 848.0, 560.0)]
    + [("gold", x, y) for x, y in ((800.0, 476.0), (880.0, 520.0), (930.0, 470.0), (760.0, 560.0))]
)


def inside(rect: tuple[float, float, float, float], x: float, y: float) -> bool:
    rx, ry, rw, rh = rect
    return rx <= x < rx + rw and ry <= y < ry + rh
