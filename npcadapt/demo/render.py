"""pygame drawing of the world: art loading, cached text, the map, characters and speech.

Imported only by the app (pygame is needed here and in :mod:`hud` / :mod:`screens`, nowhere
else). The screen is 1280 x 720: a top bar, the 960 x 640 world view, the HUD panel on the
right and a key-hint bar at the bottom. Static layers (tiles, trees, props) are drawn once
per time of day into a background surface; each frame blits it and draws the characters
sorted by depth, their speech bubbles and reward flashes.
"""

from __future__ import annotations

import math
from pathlib import Path

import pygame

from . import rules
from .rules import CLOSING, COMPANION, DUELIST, HAGGLER, MERCHANT
from .village import DECOR, HEIGHT, STALL_TOP, TILE, WIDTH
from .world import SHEETS, SPRITES, Npc, World

ASSETS = Path(__file__).resolve().parent.parent.parent / "assets" / "demo"
SIZE = (1280, 720)
TOP = 32
WORLD_POS = (0, TOP)
PANEL = pygame.Rect(WIDTH, TOP, SIZE[0] - WIDTH, HEIGHT)
BOTTOM = pygame.Rect(0, TOP + HEIGHT, SIZE[0], SIZE[1] - TOP - HEIGHT)
INK = (236, 236, 240)
DIM = (160, 164, 180)
GOOD, BAD, NEUTRAL = (110, 220, 120), (240, 96, 90), (200, 200, 200)
ACCENT = {DUELIST: (236, 120, 90), MERCHANT: (240, 200, 80), COMPANION: (110, 210, 150), HAGGLER: (200, 140, 255)}
ROLE = {DUELIST: "sparring partner", MERCHANT: "merchant", COMPANION: "companion", HAGGLER: "travelling trader"}
MOOD_COLOURS = ((214, 56, 44), (226, 134, 60), (224, 204, 120), (168, 214, 108), (90, 222, 112))  # furious .. delighted
OFFER = (255, 220, 90)  # bubble colour of a line that waits for a key: a duelist's move, a haggler's offer
TILE_FILES = {"g": "grass", "s": "sand", "c": "cobble", "d": "dirt", "v": "slab", "w": "wall", "~": "water"}


class Art:
    """Sprites, tiles and fonts (pygame's default font, freesansbold), loaded once."""

    def __init__(self, root: Path = ASSETS):
        def load(rel: str) -> pygame.Surface:
            path = root / rel
            if not path.exists():
                raise FileNotFoundError(f"demo art {path} is missing; regenerate with assets/demo/make_art.py")
            return pygame.image.load(str(path)).convert_alpha()

        self.tiles = {code: load(f"tiles/{name}.png") for code, name in TILE_FILES.items() if code != "g"}
        self.grass = [load(f"tiles/grass{i}.png") for i in range(3)]
        self.flowers = load("tiles/flowers.png")
        self.props = {
            name: load(f"props/{name}.png")
            for name in ("tree", "bush", "chest", "barrel", "post", "crate", "well", "rug", "gold")
        }
        self.stalls = [load(f"props/stall{i}.png") for i in range(SPRITES[MERCHANT])]
        self.icons = {name: load(f"icons/{name}.png") for name in ("heart", "coin", "bolt", "shield")}
        self.people: dict[str, list[pygame.Surface]] = {}
        for name in ["player", *(f"{kind}{i}" for kind, count in SPRITES.items() for i in range(count))]:
            self.people[name] = [load(f"characters/{name}_{f}.png") for f in (0, 1)]
        self.shadow = pygame.Surface((30, 10), pygame.SRCALPHA)
        pygame.draw.ellipse(self.shadow, (0, 0, 0, 70), self.shadow.get_rect())
        self._fonts: dict[int, pygame.font.Font] = {}
        self._text: dict[tuple, pygame.Surface] = {}

    def font(self, size: int) -> pygame.font.Font:
        if size not in self._fonts:
            self._fonts[size] = pygame.font.Font(None, size)
        return self._fonts[size]

    def text(self, text: str, size: int = 18, colour: tuple = INK) -> pygame.Surface:
        """A rendered text surface, cached (numbers on the HUD change a few times a second)."""
        key = (text, size, colour)
        surf = self._text.get(key)
        if surf is None:
            if len(self._text) > 3000:
                self._text.clear()
            surf = self._text[key] = self.font(size).render(text, True, colour)
        return surf

    def sprite(self, npc: Npc, moving: bool) -> pygame.Surface:
        sheet = SHEETS.get(npc.archetype, npc.archetype)
        frames = self.people[f"{sheet}{npc.variant}"]  # World keeps variants within SPRITES
        return frames[int(npc.walk / 14) % 2 if moving else 0]


def blit_text(
    surface: pygame.Surface,
    art: Art,
    text: str,
    pos: tuple[int, int],
    size: int = 18,
    colour: tuple = INK,
    anchor: str = "topleft",
    shadow: bool = False,
) -> pygame.Rect:
    img = art.text(text, size, colour)
    rect = img.get_rect(**{anchor: pos})
    if shadow:
        surface.blit(art.text(text, size, (20, 20, 28)), rect.move(1, 1))
    surface.blit(img, rect)
    return rect


def reward_colour(value: float) -> tuple[int, int, int]:
    return GOOD if value > 1e-9 else BAD if value < -1e-9 else NEUTRAL


class WorldView:
    """Draws a :class:`World` into the world rectangle of the screen."""

    def __init__(self, art: Art, world: World):
        self.art, self.world = art, world
        day = self._background(world)
        night = day.copy()
        night.fill((176, 164, 226), special_flags=pygame.BLEND_MULT)
        self.backgrounds = (day, night)

    def _background(self, world: World) -> pygame.Surface:
        bg = pygame.Surface((WIDTH, HEIGHT)).convert()
        art = self.art
        for y, row in enumerate(world.terrain):
            for x, code in enumerate(row):
                tile = art.grass[(x * 7 + y * 13) % 3] if code == "g" else art.tiles[code]
                bg.blit(tile, (x * TILE, y * TILE))
                if code == "g" and (x * 31 + y * 17) % 11 == 0:
                    bg.blit(art.flowers, (x * TILE, y * TILE))
        hagglers = [n for n in world.npcs if n.archetype == HAGGLER]
        wares = [("rug", n.home[0], n.home[1] + 50) for n in hagglers]  # the haggler's rug, a crate and a barrel
        wares += [
            (kind, n.home[0] + dx, n.home[1] + dy)
            for n in hagglers
            for kind, dx, dy in (("crate", 34, 4), ("barrel", -34, 2))
        ]
        for kind, px, py in sorted(DECOR + wares, key=lambda d: (d[0] != "rug", d[2])):
            img = art.props[kind]
            bg.blit(img, img.get_rect(midbottom=(int(px), int(py))))
        return bg

    def draw(self, screen: pygame.Surface, selected: Npc | None) -> None:
        world, art = self.world, self.art
        view = screen.subsurface(pygame.Rect(WORLD_POS, (WIDTH, HEIGHT)))
        view.blit(self.backgrounds[int(world.evening)], (0, 0))
        if selected is not None:
            pygame.draw.ellipse(view, ACCENT[selected.archetype], (selected.x - 20, selected.y - 8, 40, 14), 2)
        p = world.player
        pygame.draw.ellipse(view, (110, 170, 255), (p.x - 18, p.y - 7, 36, 13), 2)
        n: Npc | None  # an NPC below, or None for the player among the people drawn by depth
        people = [(n.y, n) for n in world.npcs if n.archetype != MERCHANT] + [(world.player.y, None)]
        for n in world.npcs:  # merchants stand behind their counters
            if n.archetype == MERCHANT:
                self._person(view, art.sprite(n, False), n.x, n.y)
                stall = art.stalls[n.variant]
                view.blit(stall, stall.get_rect(midtop=(int(n.home[0]), int(STALL_TOP))))
        for n in world.npcs:
            if n.archetype == HAGGLER:
                self._ware(view, n)
        for _, n in sorted(people, key=lambda p: p[0]):
            if n is None:
                p = world.player
                moving = math.hypot(p.vx, p.vy) > 20
                self._person(view, art.people["player"][int(p.walk / 14) % 2 if moving else 0], p.x, p.y)
            else:
                self._person(view, art.sprite(n, n.moving), n.x, n.y)
        placed: list[pygame.Rect] = []
        for n in sorted(world.npcs, key=lambda n: -n.y):
            self._speech(view, n, placed)
        self._player_move(view)

    def _person(self, view: pygame.Surface, img: pygame.Surface, x: float, y: float) -> None:
        view.blit(self.art.shadow, (int(x) - 15, int(y) - 5))
        view.blit(img, img.get_rect(midbottom=(int(x), int(y) + 2)))

    def _speech(self, view: pygame.Surface, npc: Npc, placed: list[pygame.Rect]) -> None:
        """Speech bubble and reward flash above `npc`, nudged up past bubbles already drawn."""
        art, now = self.art, self.world.time
        top = int(npc.y) - 50
        if npc.archetype == HAGGLER and (npc.open or npc.engaged):
            top = self._mood_tag(view, npc, top)
        if npc.bubble and now < npc.bubble_until:
            offer = npc.bubble == "!" or (
                npc.archetype == HAGGLER and npc.pending is not None and npc.pending.action in CLOSING
            )
            colour = OFFER if offer else (250, 248, 240)
            img = art.text(npc.bubble, 16, (30, 30, 40))
            box = img.get_rect(midbottom=(int(npc.x), top)).inflate(12, 8)
            for _ in range(4):
                hit = box.collidelist(placed)
                if hit < 0:
                    break
                box.bottom = placed[hit].top - 2
            box.clamp_ip(view.get_rect())
            placed.append(box)
            pygame.draw.rect(view, colour, box, border_radius=6)
            pygame.draw.rect(view, (40, 36, 50), box, 1, border_radius=6)
            pygame.draw.polygon(
                view, colour, [(npc.x - 4, box.bottom - 1), (npc.x + 4, box.bottom - 1), (npc.x, box.bottom + 5)]
            )
            view.blit(img, img.get_rect(center=box.center))
            top = box.top - 2
        if npc.flash is not None:
            text, value, t0 = npc.flash
            age = now - t0
            if age < 1.2:
                blit_text(
                    view,
                    art,
                    text,
                    (int(npc.x), top - int(age * 18)),
                    18,
                    reward_colour(value),
                    anchor="midbottom",
                    shadow=True,
                )
        label = art.text(npc.name, 14, ACCENT[npc.archetype])
        view.blit(label, label.get_rect(midtop=(int(npc.x), int(npc.y) + 4)))

    def _ware(self, view: pygame.Surface, npc: Npc) -> None:
        """The item of the haggler's visit on its rug: a sword (weapon) or a gem (trinket)."""
        x, y = int(npc.home[0]), int(npc.home[1]) + 26
        if rules.ITEMS[npc.item] == "weapon":
            pygame.draw.line(view, (40, 36, 50), (x - 19, y + 9), (x + 19, y - 7), 6)
            pygame.draw.line(view, (214, 218, 236), (x - 18, y + 8), (x + 18, y - 6), 3)
            pygame.draw.line(view, (150, 100, 50), (x - 14, y + 1), (x - 8, y + 13), 4)  # the guard
        else:
            gem = [(x, y - 9), (x + 9, y), (x, y + 9), (x - 9, y)]
            pygame.draw.polygon(view, (120, 230, 200), gem)
            pygame.draw.polygon(view, (40, 36, 50), gem, 2)

    def _mood_tag(self, view: pygame.Surface, npc: Npc, top: int) -> int:
        """The customer's mood as the haggler sees it: a face and a word above it; returns the new top."""
        img = self.art.text(f"customer: {rules.MOODS[npc.mood]}", 16, (30, 30, 40))
        box = img.get_rect(midbottom=(int(npc.x) + 12, top)).inflate(34, 8)
        box.clamp_ip(view.get_rect())
        pygame.draw.rect(view, (236, 230, 250), box, border_radius=5)
        pygame.draw.rect(view, ACCENT[HAGGLER], box, 1, border_radius=5)
        cx, cy = box.left + 13, box.centery
        pygame.draw.circle(view, MOOD_COLOURS[npc.mood], (cx, cy), 8)
        pygame.draw.circle(view, (40, 36, 50), (cx, cy), 8, 1)
        for dx in (-3, 3):
            pygame.draw.rect(view, (30, 30, 30), (cx + dx - 1, cy - 3, 2, 2))
        bend = (npc.mood - 2) * 2  # frown .. smile
        pygame.draw.lines(view, (30, 30, 30), False, [(cx - 4, cy + 3), (cx, cy + 3 + bend), (cx + 4, cy + 3)], 2)
        view.blit(img, img.get_rect(midleft=(cx + 12, cy)))
        return box.top - 2

    def _player_move(self, view: pygame.Surface) -> None:
        p = self.world.player
        if p.last_move is not None and self.world.time - p.last_move_time < 0.6:
            blit_text(
                view,
                self.art,
                rules.PLAYER_MOVES[p.last_move].replace("_", " "),
                (int(p.x), int(p.y) - 52),
                18,
                (150, 200, 255),
                anchor="midbottom",
                shadow=True,
            )
