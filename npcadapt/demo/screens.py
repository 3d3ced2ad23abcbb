"""Full-screen overlays: the profile prompt at start, the help overlay, the pause screen."""

from __future__ import annotations

import pygame

from ..errors import InvalidInputError
from .hud import PANEL_BG
from .profiles import Profiles, check_name
from .render import ACCENT, BAD, DIM, INK, SIZE, Art, blit_text
from .rules import COMPANION, DUELIST, HAGGLER, MERCHANT

HELP = [
    ("WASD / arrows", "walk"),
    ("1 - 8", "duel moves: high strike, low sweep, rush, block high, block low, backstep, jump, counter"),
    ("B / N", "at a stall: buy what is offered / no thanks (walking off mid-pitch = walking away)"),
    ("T / X", "to your companion: thanks / stop that"),
    ("= or + / - / 0", "to a travelling trader's line: you like it (mood up) / dislike it (mood down) / unmoved"),
    ("B / N", "to a trader's closing offer: take it / refuse it (sours the mood; no key = refused; walking off costs)"),
    ("Tab, click", "choose the NPC the panel shows (click empty ground: nearest again)"),
    ("M", "adaptation on/off: off = every NPC plays the shipped base policy"),
    ("Delete twice", "erase this profile's adapters: the NPCs forget you"),
    ("P / Esc", "pause (Q there saves and quits)      F12  screenshot      H / F1  this help"),
]
LEARNS = [
    (
        DUELIST,
        (
            "Sparring partners see distance, your stance (walking at them = aggressive, away = defensive,"
            " still = neutral) and stamina. They are scored on your move: fall into a habit and they counter it."
        ),
    ),
    (
        MERCHANT,
        (
            "Merchants see time of day, your gold and your gear. Buying rewards the pitch, 'no thanks' is"
            " neutral, walking off mid-pitch costs them."
        ),
    ),
    (
        COMPANION,
        (
            "Your companion sees your health, the fight around you and where you are. Thanks and"
            " 'stop that' are its only teachers."
        ),
    ),
    (
        HAGGLER,
        (
            "Travelling traders see your mood (moved by how you take their lines) and the item. Only a sale"
            " pays (less with a discount); pressing a furious customer again makes them walk away, which costs."
        ),
    ),
]


_SHADES: dict[int, pygame.Surface] = {}


def _dim(screen: pygame.Surface, alpha: int = 170) -> None:
    if alpha not in _SHADES:
        _SHADES[alpha] = pygame.Surface(SIZE, pygame.SRCALPHA)
        _SHADES[alpha].fill((8, 8, 14, alpha))
    screen.blit(_SHADES[alpha], (0, 0))


def _wrap(art: Art, text: str, width: int, size: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if art.font(size).size(trial)[0] > width and line:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line] if line else lines


def draw_help(screen: pygame.Surface, art: Art) -> None:
    _dim(screen)
    box = pygame.Rect(0, 0, 900, 560)
    box.center = (SIZE[0] // 2, SIZE[1] // 2)
    pygame.draw.rect(screen, PANEL_BG, box, border_radius=10)
    pygame.draw.rect(screen, ACCENT[DUELIST], box, 2, border_radius=10)
    x, y = box.x + 28, box.y + 20
    blit_text(screen, art, "How to play", (x, y), 32, INK)
    y += 40
    for key, what in HELP:
        blit_text(screen, art, key, (x, y), 18, ACCENT[MERCHANT])
        blit_text(screen, art, what, (x + 150, y), 18, INK)
        y += 25
    y += 12
    blit_text(screen, art, "What the NPCs learn from (each profile has its own adapters)", (x, y), 22, INK)
    y += 30
    for arch, text in LEARNS:
        pygame.draw.circle(screen, ACCENT[arch], (x + 6, y + 8), 5)
        for line in _wrap(art, text, box.w - 80, 18):
            blit_text(screen, art, line, (x + 20, y), 18, DIM)
            y += 21
        y += 8
    blit_text(screen, art, "H or F1 closes this help", (box.centerx, box.bottom - 28), 18, DIM, "midtop")


def draw_pause(screen: pygame.Surface, art: Art, saved: bool) -> None:
    _dim(screen, 150)
    cx, cy = SIZE[0] // 2, SIZE[1] // 2
    blit_text(screen, art, "Paused", (cx, cy - 60), 56, INK, "midtop")
    blit_text(screen, art, "P / Esc resume   ·   Q save and quit   ·   H help", (cx, cy + 10), 22, DIM, "midtop")
    if saved:
        blit_text(
            screen, art, "adapters and the interaction log are saved", (cx, cy + 44), 18, ACCENT[COMPANION], "midtop"
        )


def profile_prompt(
    screen: pygame.Surface, art: Art, profiles: Profiles, backdrop: pygame.Surface | None = None
) -> str | None:
    """Ask who is playing: type a name or pick a listed one. Returns the name, or None to quit."""
    clock = pygame.time.Clock()
    known = [p.name for p in profiles.list()][:8]
    text, choice, error = "", -1, ""
    pygame.key.start_text_input()
    try:
        while True:
            rows = []
            for event in pygame.event.get():
                if event.type == pygame.QUIT:
                    return None
                if event.type == pygame.TEXTINPUT and len(text) < 24:
                    text, choice, error = text + event.text, -1, ""
                elif event.type == pygame.KEYDOWN:
                    if event.key == pygame.K_ESCAPE:
                        return None
                    if event.key == pygame.K_BACKSPACE:
                        text, error = text[:-1], ""
                    elif event.key in (pygame.K_UP, pygame.K_DOWN) and known:
                        choice = (choice + (1 if event.key == pygame.K_DOWN else -1)) % len(known)
                        text = known[choice]
                    elif event.key in (pygame.K_RETURN, pygame.K_KP_ENTER):
                        try:
                            return check_name(text)
                        except InvalidInputError:
                            error = "1-24 letters, digits, spaces, _ . ' - (start with a letter or digit)"
                elif event.type == pygame.MOUSEBUTTONDOWN:
                    rows = _prompt_rows(known)
                    for i, rect in enumerate(rows):
                        if rect.collidepoint(event.pos):
                            return known[i]
            _draw_prompt(screen, art, backdrop, text, known, choice, error)
            pygame.display.flip()
            clock.tick(30)
    finally:
        pygame.key.stop_text_input()


def _prompt_rows(known: list[str]) -> list[pygame.Rect]:
    return [pygame.Rect(SIZE[0] // 2 - 160, 390 + i * 30, 320, 26) for i in range(len(known))]


def _draw_prompt(screen, art: Art, backdrop, text: str, known: list[str], choice: int, error: str) -> None:
    screen.fill((20, 22, 30))
    if backdrop is not None:
        screen.blit(backdrop, backdrop.get_rect(center=(SIZE[0] // 2, SIZE[1] // 2)))
    _dim(screen, 190)
    cx = SIZE[0] // 2
    blit_text(screen, art, "npcadapt", (cx, 120), 64, ACCENT[DUELIST], "midtop")
    blit_text(screen, art, "a village whose NPCs learn how you play", (cx, 178), 24, INK, "midtop")
    blit_text(screen, art, "Who is playing? Type a name and press Enter", (cx, 250), 22, DIM, "midtop")
    box = pygame.Rect(cx - 180, 284, 360, 44)
    pygame.draw.rect(screen, (34, 36, 50), box, border_radius=8)
    pygame.draw.rect(screen, ACCENT[MERCHANT], box, 2, border_radius=8)
    cursor = "|" if (pygame.time.get_ticks() // 500) % 2 == 0 else " "
    blit_text(screen, art, text + cursor, (box.x + 14, box.centery), 28, INK, "midleft")
    if error:
        blit_text(screen, art, error, (cx, box.bottom + 8), 18, BAD, "midtop")
    if known:
        blit_text(
            screen,
            art,
            "or pick a profile (click, or Up/Down then Enter): the NPCs remember them",
            (cx, 360),
            18,
            DIM,
            "midtop",
        )
        for i, rect in enumerate(_prompt_rows(known)):
            hot = i == choice or rect.collidepoint(pygame.mouse.get_pos())
            pygame.draw.rect(screen, (52, 56, 78) if hot else (32, 34, 46), rect, border_radius=6)
            blit_text(screen, art, known[i], rect.center, 20, INK, "center")
    blit_text(screen, art, "Esc quits", (cx, SIZE[1] - 40), 16, DIM, "midtop")
