"""Generate the demo's pixel art (tiles, props, characters, icons) as PNG files.

Everything is drawn here from code, pixel by pixel, at a small base resolution and
scaled up without smoothing; nothing is downloaded or copied. Run it to regenerate:

    .venv/bin/python assets/demo/make_art.py

The output (``tiles/``, ``props/``, ``characters/``, ``icons/``) is committed, so the
game never runs this script. Deterministic: a fixed seed drives the texture noise.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
import pygame

HERE = Path(__file__).resolve().parent
SCALE = 2  # base pixels -> screen pixels
OUTLINE = (34, 26, 38)
RNG = np.random.default_rng(7)

Colour = tuple[int, int, int]


# -- canvas helpers -----------------------------------------------------------------------
def canvas(w: int, h: int, fill: Colour | None = None) -> np.ndarray:
    """(h, w, 4) RGBA, transparent or filled."""
    a = np.zeros((h, w, 4), np.uint8)
    if fill is not None:
        a[:, :, :3] = fill
        a[:, :, 3] = 255
    return a


def rect(a: np.ndarray, x: int, y: int, w: int, h: int, c: Colour) -> None:
    a[max(y, 0):y + h, max(x, 0):x + w, :3] = c
    a[max(y, 0):y + h, max(x, 0):x + w, 3] = 255


def px(a: np.ndarray, x: int, y: int, c: Colour) -> None:
    if 0 <= y < a.shape[0] and 0 <= x < a.shape[1]:
        a[y, x, :3] = c
        a[y, x, 3] = 255


def disc(a: np.ndarray, cx: float, cy: float, r: float, c: Colour) -> None:
    yy, xx = np.mgrid[: a.shape[0], : a.shape[1]]
    inside = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r
    a[inside, :3] = c
    a[inside, 3] = 255


def speckle(a: np.ndarray, colours: list[Colour], density: float) -> None:
    """Random single-pixel speckles over the opaque area."""
    hit = (RNG.random(a.shape[:2]) < density) & (a[:, :, 3] > 0)
    picks = RNG.integers(0, len(colours), a.shape[:2])
    for i, c in enumerate(colours):
        a[hit & (picks == i), :3] = c


def outline(a: np.ndarray, c: Colour = OUTLINE) -> np.ndarray:
    """A 1-pixel outline around the opaque pixels (4-neighbourhood); returns a new array."""
    h, w = a.shape[:2]
    out = canvas(w + 2, h + 2)
    out[1:-1, 1:-1] = a
    solid = out[:, :, 3] > 0
    grown = solid.copy()
    grown[1:, :] |= solid[:-1, :]
    grown[:-1, :] |= solid[1:, :]
    grown[:, 1:] |= solid[:, :-1]
    grown[:, :-1] |= solid[:, 1:]
    ring = grown & ~solid
    out[ring, :3] = c
    out[ring, 3] = 255
    return out


def shade(c: Colour, f: float) -> Colour:
    return tuple(int(max(0, min(255, v * f))) for v in c)  # type: ignore[return-value]


def save(a: np.ndarray, name: str, scale: int = SCALE) -> None:
    path = HERE / name
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = a.shape[:2]
    surf = pygame.image.frombuffer(np.ascontiguousarray(a).tobytes(), (w, h), "RGBA")
    pygame.image.save(pygame.transform.scale(surf, (w * scale, h * scale)), str(path))


# -- tiles (16 x 16 base) -------------------------------------------------------------------
def grass(variant: int) -> np.ndarray:
    a = canvas(16, 16, (92, 164, 80))
    speckle(a, [(76, 144, 68), (108, 182, 92), (84, 154, 72)], 0.22)
    for _ in range(3 + variant):
        x, y = RNG.integers(1, 15), RNG.integers(2, 15)
        px(a, x, y, (62, 128, 58))
        px(a, x, y - 1, (120, 196, 100))
    return a


def sand() -> np.ndarray:
    a = canvas(16, 16, (226, 200, 146))
    speckle(a, [(208, 180, 126), (238, 218, 168), (214, 188, 134)], 0.25)
    return a


def cobble() -> np.ndarray:
    a = canvas(16, 16, (104, 98, 94))
    stones = [(0, 0, 7, 4), (8, 0, 8, 4), (0, 5, 4, 5), (5, 5, 6, 5), (12, 5, 4, 5),
              (0, 11, 8, 5), (9, 11, 7, 5)]
    for x, y, w, h in stones:
        base = (150 + RNG.integers(-12, 12),) * 3
        c = (int(base[0]), int(base[0] - 4), int(base[0] - 10))
        rect(a, x, y, w - 1, h - 1, c)
        rect(a, x, y, w - 1, 1, shade(c, 1.12))
        rect(a, x, y + h - 2, w - 1, 1, shade(c, 0.85))
    return a


def dirt() -> np.ndarray:
    a = canvas(16, 16, (158, 118, 78))
    speckle(a, [(140, 102, 66), (174, 134, 90), (128, 94, 62)], 0.25)
    for _ in range(2):
        x, y = RNG.integers(1, 15), RNG.integers(1, 15)
        px(a, x, y, (120, 112, 104))
    return a


def slab() -> np.ndarray:
    a = canvas(16, 16, (88, 90, 110))
    speckle(a, [(80, 82, 100), (96, 98, 118)], 0.2)
    rect(a, 0, 7, 16, 1, (64, 66, 82))
    rect(a, 7, 0, 1, 7, (64, 66, 82))
    rect(a, 12, 8, 1, 8, (64, 66, 82))
    rect(a, 0, 0, 7, 1, (104, 106, 128))
    rect(a, 0, 8, 12, 1, (104, 106, 128))
    return a


def wall() -> np.ndarray:
    a = canvas(16, 16, (78, 56, 50))
    for row in range(4):
        off = 0 if row % 2 == 0 else 4
        for col in range(-1, 3):
            x = col * 8 + off
            c = (128 + RNG.integers(-10, 10), 86, 70)
            rect(a, x, row * 4, 7, 3, tuple(int(v) for v in c))
            rect(a, x, row * 4, 7, 1, (150, 104, 86))
    return a


def water() -> np.ndarray:
    a = canvas(16, 16, (70, 130, 200))
    speckle(a, [(90, 150, 215), (60, 116, 184)], 0.2)
    for y in (4, 11):
        x = RNG.integers(1, 9)
        rect(a, int(x), y, 5, 1, (170, 210, 240))
    return a


# -- props -----------------------------------------------------------------------------------
def tree() -> np.ndarray:
    a = canvas(24, 30)
    rect(a, 10, 20, 4, 9, (110, 74, 46))
    rect(a, 10, 20, 1, 9, (132, 92, 58))
    for cx, cy, r in ((12, 11, 9.5), (7, 15, 6), (17, 15, 6)):
        disc(a, cx, cy, r, (56, 128, 62))
    disc(a, 10, 9, 5.5, (74, 152, 74))
    disc(a, 9, 7, 2.5, (104, 180, 96))
    speckle(a, [(46, 110, 54)], 0.06)
    return outline(a)


def bush() -> np.ndarray:
    a = canvas(14, 10)
    for cx, cy, r in ((4, 6, 4), (9, 5, 4.5), (7, 7, 3.5)):
        disc(a, cx, cy, r, (62, 140, 66))
    disc(a, 8, 3.5, 2, (96, 176, 92))
    px(a, 4, 4, (220, 80, 90))
    px(a, 10, 7, (220, 80, 90))
    return outline(a)


def flowers() -> np.ndarray:
    a = canvas(16, 16)
    for x, y, c in ((3, 4, (240, 230, 120)), (11, 6, (240, 140, 170)), (6, 12, (250, 250, 250)),
                    (13, 13, (240, 230, 120))):
        for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            px(a, x + dx, y + dy, c)
        px(a, x, y, (230, 150, 40))
    return a


def stall(awning: Colour) -> np.ndarray:
    a = canvas(40, 34)
    rect(a, 3, 10, 2, 16, (110, 74, 46))
    rect(a, 35, 10, 2, 16, (110, 74, 46))
    for i in range(8):
        c = awning if i % 2 == 0 else (244, 238, 226)
        rect(a, i * 5, 0, 5, 8, c)
        disc(a, i * 5 + 2.5, 8, 2.6, c)
    rect(a, 0, 0, 40, 1, shade(awning, 0.7))
    rect(a, 1, 22, 38, 10, (152, 104, 62))
    rect(a, 1, 22, 38, 2, (186, 134, 84))
    rect(a, 1, 31, 38, 1, (110, 74, 46))
    goods = [(6, 19, (220, 60, 60)), (9, 19, (230, 80, 70)), (14, 18, (80, 140, 230)),
             (17, 18, (120, 200, 240)), (23, 19, (240, 200, 60)), (27, 19, (200, 200, 210)),
             (31, 18, (160, 100, 200)), (34, 19, (90, 190, 110))]
    for x, y, c in goods:
        rect(a, x, y, 3, 3, c)
        px(a, x, y, shade(c, 1.3))
    return outline(a)


def chest() -> np.ndarray:
    a = canvas(14, 11)
    rect(a, 0, 3, 14, 8, (150, 96, 50))
    rect(a, 0, 0, 14, 4, (172, 114, 62))
    rect(a, 0, 4, 14, 1, (232, 190, 70))
    rect(a, 3, 0, 1, 11, (232, 190, 70))
    rect(a, 10, 0, 1, 11, (232, 190, 70))
    rect(a, 6, 4, 2, 3, (250, 226, 120))
    return outline(a)


def barrel() -> np.ndarray:
    a = canvas(10, 12)
    rect(a, 1, 0, 8, 12, (140, 92, 54))
    rect(a, 0, 2, 10, 8, (140, 92, 54))
    for y in (2, 9):
        rect(a, 0, y, 10, 1, (90, 90, 100))
    rect(a, 3, 0, 1, 12, (160, 110, 66))
    return outline(a)


def crate() -> np.ndarray:
    a = canvas(12, 12)
    rect(a, 0, 0, 12, 12, (170, 122, 70))
    rect(a, 0, 0, 12, 2, (196, 146, 90))
    for i in range(12):
        px(a, i, i, (126, 86, 48))
    rect(a, 0, 5, 12, 1, (126, 86, 48))
    return outline(a)


def well() -> np.ndarray:
    a = canvas(26, 24)
    rect(a, 3, 12, 20, 11, (140, 138, 134))
    for row, y in enumerate((12, 16, 20)):
        for x in range(3 + (row % 2) * 3, 23, 6):
            rect(a, x, y, 1, 3, (104, 102, 100))
    rect(a, 3, 12, 20, 1, (176, 174, 170))
    rect(a, 5, 9, 16, 4, (64, 118, 190))
    rect(a, 5, 9, 16, 1, (120, 170, 230))
    rect(a, 4, 2, 2, 11, (110, 74, 46))
    rect(a, 20, 2, 2, 11, (110, 74, 46))
    rect(a, 1, 0, 24, 3, (170, 60, 50))
    rect(a, 1, 0, 24, 1, (206, 90, 76))
    rect(a, 6, 4, 14, 1, (120, 86, 56))
    rect(a, 12, 5, 2, 3, (120, 120, 130))
    return outline(a)


def rug() -> np.ndarray:
    a = canvas(48, 24, (150, 40, 54))
    rect(a, 2, 2, 44, 20, (176, 58, 70))
    rect(a, 4, 4, 40, 16, (150, 40, 54))
    for x in range(8, 41, 8):
        rect(a, x, 10, 3, 3, (232, 190, 70))
    rect(a, 0, 0, 48, 1, (232, 190, 70))
    rect(a, 0, 23, 48, 1, (232, 190, 70))
    return a


def gold_pile() -> np.ndarray:
    a = canvas(14, 8)
    for cx, cy, r in ((4, 6, 3), (9, 6, 3.5), (7, 4, 3)):
        disc(a, cx, cy, r, (226, 180, 48))
    for x, y in ((3, 4), (8, 3), (10, 5), (6, 6)):
        px(a, x, y, (255, 236, 140))
    return outline(a)


def post() -> np.ndarray:
    a = canvas(4, 12)
    rect(a, 0, 2, 4, 10, (120, 82, 50))
    rect(a, 0, 0, 4, 3, (200, 60, 60))
    rect(a, 1, 2, 1, 10, (146, 102, 64))
    return outline(a)


# -- characters (16 x 20 base) -------------------------------------------------------------------
SKIN = [(240, 200, 160), (200, 150, 110), (150, 104, 72), (250, 214, 180)]
HAIR = [(80, 52, 36), (30, 24, 26), (200, 160, 80), (160, 70, 40), (120, 120, 130)]


def character(tunic: Colour, *, skin: Colour, hair: Colour, pants: Colour = (70, 64, 90),
              frame: int = 0, extra: str = "", accent: Colour = (230, 230, 230),
              hat: Colour = (200, 60, 60)) -> np.ndarray:
    """A front-facing figure; `extra` adds the role's marks: sword, apron, hood, cape, band."""
    a = canvas(16, 20)
    if "cape" in extra:
        rect(a, 3, 9, 10, 9, accent)
    # legs and shoes (frame 1 lifts the left leg)
    lift = 1 if frame == 1 else 0
    rect(a, 5, 15, 2, 4 - lift, pants)
    rect(a, 5, 19 - lift, 2, 1, (48, 36, 34))
    rect(a, 9, 15, 2, 4, pants)
    rect(a, 9, 19, 2, 1, (48, 36, 34))
    # body, arms, hands, belt
    rect(a, 4, 9, 8, 6, tunic)
    rect(a, 4, 9, 8, 1, shade(tunic, 1.18))
    rect(a, 3, 9 + (frame == 1), 1, 5, shade(tunic, 0.85))
    rect(a, 12, 9 + (frame == 0), 1, 5, shade(tunic, 0.85))
    px(a, 3, 14 + (frame == 1), skin)
    px(a, 12, 14 + (frame == 0), skin)
    rect(a, 4, 13, 8, 1, shade(tunic, 0.6))
    if "apron" in extra:
        rect(a, 5, 10, 6, 6, accent)
        rect(a, 5, 10, 6, 1, shade(accent, 0.85))
    # head, hair, eyes
    rect(a, 5, 3, 6, 6, skin)
    rect(a, 5, 2, 6, 2, hair)
    px(a, 5, 4, hair)
    px(a, 10, 4, hair)
    px(a, 6, 6, (40, 30, 40))
    px(a, 9, 6, (40, 30, 40))
    px(a, 7, 8, shade(skin, 0.85))
    px(a, 8, 8, shade(skin, 0.85))
    if "band" in extra:
        rect(a, 5, 3, 6, 1, accent)
        px(a, 4, 4, accent)
    if "hat" in extra:
        rect(a, 4, 2, 8, 1, hat)
        rect(a, 6, 0, 4, 2, hat)
    if "hood" in extra:
        rect(a, 4, 1, 8, 2, tunic)
        rect(a, 4, 3, 1, 6, tunic)
        rect(a, 11, 3, 1, 6, tunic)
    if "sword" in extra:
        rect(a, 14, 4, 1, 9, (214, 220, 232))
        px(a, 14, 3, (250, 250, 255))
        rect(a, 13, 12, 3, 1, (232, 190, 70))
        px(a, 14, 13, (120, 80, 50))
    if "staff" in extra:
        rect(a, 14, 3, 1, 17, (130, 90, 56))
        rect(a, 13, 1, 3, 3, (110, 230, 230))
        px(a, 14, 1, (220, 255, 255))
    return outline(a)


DUELIST_COLOURS: list[Colour] = [
    (204, 62, 62), (232, 138, 48), (214, 184, 54), (78, 170, 84),
    (48, 168, 176), (140, 92, 206), (212, 80, 160), (120, 140, 172),
]


def characters() -> None:
    for frame in (0, 1):
        save(character((60, 110, 220), skin=SKIN[0], hair=HAIR[0], frame=frame, extra="cape",
                       accent=(196, 48, 60)), f"characters/player_{frame}.png")
        for i, c in enumerate(DUELIST_COLOURS):
            save(character(c, skin=SKIN[i % len(SKIN)], hair=HAIR[i % len(HAIR)], frame=frame,
                           pants=shade(c, 0.45), extra="band sword", accent=(245, 245, 245)),
                 f"characters/duelist{i}_{frame}.png")
        for i, (c, hat) in enumerate((((120, 84, 60), (200, 60, 60)), ((70, 90, 130), (60, 140, 200)),
                                      ((96, 120, 70), (230, 180, 60)))):
            save(character(c, skin=SKIN[(i + 1) % len(SKIN)], hair=HAIR[(i + 2) % len(HAIR)],
                           frame=frame, extra="apron hat", accent=(238, 232, 214), hat=hat),
                 f"characters/merchant{i}_{frame}.png")
        for i, c in enumerate(((60, 150, 90), (170, 110, 60))):
            save(character(c, skin=SKIN[(i + 3) % len(SKIN)], hair=HAIR[1], frame=frame,
                           extra="hood staff"), f"characters/companion{i}_{frame}.png")


# -- icons (8 x 8 base) ----------------------------------------------------------------------------
def stamp(a: np.ndarray, rows: list[str], colour, dy: int = 0) -> None:
    """Paint `colour` where a pattern row has an X (row r at y = r + dy)."""
    for y, row in enumerate(rows):
        for x, ch in enumerate(row):
            if ch == "X":
                px(a, x, y + dy, colour)


def icons() -> None:
    heart = canvas(8, 8)
    stamp(heart, [".XX.XX..", "XXXXXXX.", "XXXXXXX.", ".XXXXX..", "..XXX...", "...X...."], (226, 60, 76), dy=1)
    px(heart, 1, 2, (255, 170, 180))
    save(outline(heart), "icons/heart.png")
    coin = canvas(8, 8)
    disc(coin, 4, 4, 3.6, (232, 186, 48))
    disc(coin, 4, 4, 2.2, (250, 216, 96))
    rect(coin, 4, 2, 1, 4, (200, 150, 30))
    save(outline(coin), "icons/coin.png")
    bolt = canvas(8, 8)
    stamp(bolt, ["....XX..", "...XX...", "..XXXX..", "....XX..", "...XX...", "..XX...."], (250, 220, 70), dy=1)
    save(outline(bolt), "icons/bolt.png")
    shield = canvas(8, 8)
    stamp(shield, ["XXXXXXX.", "XXXXXXX.", "XXXXXXX.", ".XXXXX..", ".XXXXX..", "..XXX...", "...X...."], (150, 170, 200))
    rect(shield, 3, 0, 1, 6, (210, 220, 240))
    save(outline(shield), "icons/shield.png")


def main() -> None:
    pygame.display.init()
    for i in range(3):
        save(grass(i), f"tiles/grass{i}.png")
    for name, fn in (("sand", sand), ("cobble", cobble), ("dirt", dirt), ("slab", slab),
                     ("wall", wall), ("water", water)):
        save(fn(), f"tiles/{name}.png")
    save(flowers(), "tiles/flowers.png")
    save(tree(), "props/tree.png")
    save(bush(), "props/bush.png")
    for i, c in enumerate(((206, 56, 56), (52, 110, 200), (60, 150, 80))):
        save(stall(c), f"props/stall{i}.png")
    save(chest(), "props/chest.png")
    save(barrel(), "props/barrel.png")
    save(post(), "props/post.png")
    save(crate(), "props/crate.png")
    save(well(), "props/well.png")
    save(rug(), "props/rug.png")
    save(gold_pile(), "props/gold.png")
    characters()
    icons()
    pygame.quit()


if __name__ == "__main__":
    main()
