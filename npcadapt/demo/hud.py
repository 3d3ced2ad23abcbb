"""The heads-up display: top status bar, the adaptation panel for one NPC, the key-hint bar.

The panel shows the selected NPC (or the nearest one that is engaged): its action
distribution now (filled bars) against the base policy (outlines) on what it sees right
now, adapter version and update count, KL to base, a rolling reward curve, and a table of
every NPC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pygame

from . import rules
from .render import (
    ACCENT,
    BAD,
    BOTTOM,
    DIM,
    GOOD,
    INK,
    PANEL,
    ROLE,
    SIZE,
    TOP,
    Art,
    blit_text,
    reward_colour,
)
from .rules import CLOSING, COMPANION, DUELIST, HAGGLER, MERCHANT
from .session import CURVE_WINDOW, Session, describe_prior
from .world import Npc

PANEL_BG = (26, 28, 40)
BAR_BG = (44, 46, 62)


@dataclass
class Ui:
    """Display state the app changes in response to keys."""

    profile: str = ""
    selected: str | None = None  # npc id; None = follow the nearest engaged NPC
    paused: bool = False
    help: bool = False
    toast: str = ""
    toast_until: float = 0.0
    erase_armed_until: float = 0.0
    frame_ms: tuple[float, float] = (0.0, 0.0)  # p50, p95 over recent frames

    def say(self, text: str, now: float, seconds: float = 2.5) -> None:
        self.toast, self.toast_until = text, now + seconds


def pick_npc(session: Session, ui: Ui) -> Npc | None:
    """The NPC the panel shows: the selected one, else the nearest engaged one, else the first."""
    world = session.world
    if ui.selected is not None:
        for npc in world.npcs:
            if npc.id == ui.selected:
                return npc
    p = world.player
    engaged = [n for n in world.npcs if n.engaged and n.archetype != COMPANION]
    pool = engaged or [n for n in world.npcs if n.engaged] or world.npcs
    return min(pool, key=lambda n: math.hypot(n.x - p.x, n.y - p.y)) if pool else None


# -- top bar --------------------------------------------------------------------------------------
def _meter(screen, art: Art, icon: str, x: int, frac: float, colour, label: str) -> int:
    screen.blit(art.icons[icon], (x, 8))
    bar = pygame.Rect(x + 20, 11, 64, 10)
    pygame.draw.rect(screen, BAR_BG, bar, border_radius=3)
    pygame.draw.rect(screen, colour, (bar.x, bar.y, int(bar.w * max(0.0, min(frac, 1.0))), bar.h), border_radius=3)
    blit_text(screen, art, label, (bar.right + 6, 10), 16, DIM)
    return bar.right + 50


def draw_top(screen: pygame.Surface, art: Art, session: Session, ui: Ui) -> None:
    pygame.draw.rect(screen, (16, 18, 26), (0, 0, SIZE[0], TOP))
    p, world = session.world.player, session.world
    x = blit_text(screen, art, "npcadapt", (10, 7), 22, ACCENT[DUELIST]).right + 8
    x = blit_text(screen, art, f"· {ui.profile}", (x, 9), 18, INK).right + 18
    x = _meter(screen, art, "heart", x, p.hp / 100, (226, 70, 84), f"{p.hp:.0f}")
    x = _meter(screen, art, "bolt", x, p.stamina / 100, (240, 210, 70), f"{p.stamina:.0f}")
    screen.blit(art.icons["coin"], (x, 8))
    x = blit_text(screen, art, f"{p.gold}", (x + 20, 10), 16, INK).right + 16
    x = _meter(
        screen, art, "shield", x, p.gear / 100, (150, 170, 210), "fresh" if p.gear >= rules.WORN_BELOW else "worn"
    )
    right = SIZE[0] - 10
    r = blit_text(
        screen, art, f"frame {ui.frame_ms[0]:.1f} ms · p95 {ui.frame_ms[1]:.1f}", (right, 10), 16, DIM, "topright"
    )
    mode = (
        "in-process"
        if session.backend.label.startswith("in-process")
        else session.backend.label.replace("socket bridge ", "bridge ")
    )
    r = blit_text(screen, art, mode, (r.left - 14, 10), 16, DIM, "topright")
    badge = ("ADAPTING", (40, 120, 64)) if session.adapting else ("BASE ONLY", (140, 50, 50))
    img = art.text(badge[0], 16, INK)
    box = img.get_rect(topright=(r.left - 14, 9)).inflate(12, 6)
    pygame.draw.rect(screen, badge[1], box, border_radius=4)
    screen.blit(img, img.get_rect(center=box.center))
    blit_text(
        screen,
        art,
        "evening" if world.evening else "morning",
        (box.left - 12, 10),
        16,
        (190, 170, 255) if world.evening else (255, 220, 130),
        "topright",
    )


# -- panel ------------------------------------------------------------------------------------------
def draw_panel(screen: pygame.Surface, art: Art, session: Session, ui: Ui) -> None:
    pygame.draw.rect(screen, PANEL_BG, PANEL)
    pygame.draw.line(screen, (60, 64, 84), PANEL.topleft, PANEL.bottomleft, 2)
    npc = pick_npc(session, ui)
    x0, y = PANEL.x + 12, PANEL.y + 10
    if npc is None:
        blit_text(screen, art, "no NPCs", (x0, y), 18, DIM)
        return
    tr = session.tracks[npc.id]
    accent = ACCENT[npc.archetype]
    screen.blit(art.sprite(npc, False), (x0, y))
    blit_text(screen, art, npc.name, (x0 + 46, y + 2), 24, INK)
    blit_text(
        screen,
        art,
        f"{npc.archetype} · {ROLE[npc.archetype]}" + ("" if ui.selected else " (nearest)"),
        (x0 + 46, y + 24),
        16,
        accent,
    )
    y += 52
    info = session.adapter(npc.archetype)
    line = f"adapter v{info['version']} · {info['updates']} updates" if info else "no adapter yet: the base policy"
    blit_text(screen, art, line, (x0, y), 18, INK)
    text = f"KL to base {max(tr.kl, 0.0):.2f} (here)" if tr.kl is not None else "KL to base -"
    blit_text(screen, art, text, (x0, y + 20), 16, DIM)
    if not session.adapting:
        blit_text(screen, art, "adaptation OFF: acting as the base", (x0, y + 38), 16, BAD)
    else:
        blit_text(screen, art, f"shared by all {npc.archetype}s of {ui.profile}", (x0, y + 38), 16, DIM)
    blit_text(screen, art, "started from " + describe_prior(session.prior(npc.archetype)), (x0, y + 56), 16, accent)
    y += 80
    blit_text(
        screen,
        art,
        f"sees: {rules.describe_levels(npc.archetype, tr.levels)} · {npc.t}/{rules.EPISODE_LENGTH}",
        (x0, y),
        16,
        INK,
    )
    y += 22
    y = _bars(screen, art, session, npc, x0, y)
    y = _curve(screen, art, tr.curve, accent, x0, y + 6)
    _table(screen, art, session, npc, x0, y + 8)


def _bars(screen, art: Art, session: Session, npc: Npc, x0: int, y: int) -> int:
    tr = session.tracks[npc.id]
    names = rules.SIM_ACTIONS[npc.archetype]
    now, base = tr.now, tr.base
    accent = ACCENT[npc.archetype]
    blit_text(screen, art, "action", (x0, y), 15, DIM)
    blit_text(screen, art, "filled = now, outline = base", (x0 + 100, y), 15, DIM)
    y += 18
    width = 150
    for i, name in enumerate(names):
        row = y + i * 19
        chosen = tr.last_action == i and npc.pending is not None and npc.archetype != DUELIST
        blit_text(screen, art, name.replace("_", " "), (x0, row + 1), 16, INK if not chosen else accent)
        bar = pygame.Rect(x0 + 100, row + 2, width, 13)
        pygame.draw.rect(screen, BAR_BG, bar, border_radius=3)
        if now is not None:
            pygame.draw.rect(
                screen, accent, (bar.x, bar.y + 2, max(1, int(width * now[i])), bar.h - 4), border_radius=2
            )
            blit_text(screen, art, f"{now[i] * 100:.0f}%", (bar.right + 6, row + 1), 16, INK)
        if base is not None:
            pygame.draw.rect(
                screen, (235, 235, 245), (bar.x, bar.y, max(2, int(width * base[i])), bar.h), 1, border_radius=3
            )
    return y + len(names) * 19


def _curve(screen, art: Art, curve, accent, x0: int, y: int) -> int:
    blit_text(screen, art, f"reward per answer (rolling mean of {CURVE_WINDOW})", (x0, y), 15, DIM)
    box = pygame.Rect(x0, y + 18, PANEL.w - 24, 74)
    pygame.draw.rect(screen, (18, 20, 30), box, border_radius=4)
    mid = box.centery
    for yy in (box.top + 6, mid, box.bottom - 6):
        pygame.draw.line(screen, (50, 54, 70), (box.left + 22, yy), (box.right - 4, yy))
    for text, yy in (("+1", box.top + 6), ("0", mid), ("-1", box.bottom - 6)):
        blit_text(screen, art, text, (box.left + 4, yy), 13, DIM, "midleft")
    pts = list(curve)
    if len(pts) >= 2:
        span = box.w - 30
        step = span / max(len(pts) - 1, 1)
        half = box.h / 2 - 6
        xy = [(box.left + 24 + i * step, mid - max(-1.0, min(1.0, v)) * half) for i, (v, _) in enumerate(pts)]
        for i in range(1, len(pts)):
            pygame.draw.line(screen, accent if pts[i][1] else (150, 150, 160), xy[i - 1], xy[i], 2)
    return box.bottom


def _table(screen, art: Art, session: Session, selected: Npc, x0: int, y: int) -> None:
    blit_text(screen, art, "NPC            adapter     KL    reward", (x0, y), 15, DIM)
    y += 18
    bottom = PANEL.bottom - 6
    for npc in session.world.npcs:
        if y + 17 > bottom:
            break
        tr = session.tracks[npc.id]
        if npc is selected:
            pygame.draw.rect(screen, (44, 48, 68), (x0 - 4, y - 1, PANEL.w - 16, 17), border_radius=3)
        pygame.draw.circle(screen, ACCENT[npc.archetype], (x0 + 4, y + 7), 4)
        blit_text(screen, art, npc.name, (x0 + 14, y), 16, INK if npc.engaged else DIM)
        info = session.adapter(npc.archetype)
        blit_text(screen, art, f"v{info['version'] if info else 0}", (x0 + 112, y), 16, DIM)
        blit_text(screen, art, "-" if tr.kl is None else f"{max(tr.kl, 0.0):.2f}", (x0 + 172, y), 16, DIM)
        if tr.window:
            mean = float(np.mean(tr.window))
            blit_text(screen, art, f"{mean:+.2f}", (x0 + 230, y), 16, reward_colour(mean))
        y += 17


# -- bottom bar ---------------------------------------------------------------------------------------
def draw_bottom(screen: pygame.Surface, art: Art, session: Session, ui: Ui) -> None:
    pygame.draw.rect(screen, (16, 18, 26), BOTTOM)
    world = session.world
    hints = []
    if any(n.archetype == DUELIST and n.engaged for n in world.npcs):
        hints.append("  ".join(f"{i + 1} {m.replace('_', ' ')}" for i, m in enumerate(rules.PLAYER_MOVES)))
    if any(n.archetype == MERCHANT and n.engaged for n in world.npcs):
        hints.append("B buy   N no thanks   (walking off = walking away)")
    hagglers = [n for n in world.npcs if n.archetype == HAGGLER and n.engaged]
    if any(n.pending is not None and n.pending.action in CLOSING for n in hagglers):
        hints.append("B take the offer   N refuse it   (walking off = walking away)")
    elif hagglers:
        hints.append(
            "= or + like that line   - dislike it   0 unmoved   (you are the customer: your mood is theirs to read)"
        )
    if any(n.archetype == COMPANION and n.pending is not None for n in world.npcs):
        hints.append("T thanks   X stop that")
    line = "   |   ".join(hints) or (
        "walk into the ring to spar, stand at a stall to shop, haggle at a rug by the vault gate; "
        "your companion follows you"
    )
    blit_text(screen, art, line, (10, BOTTOM.y + 6), 18, (255, 226, 140) if hints else INK)
    blit_text(
        screen,
        art,
        "WASD/arrows move · Tab/click select NPC · M adaptation on/off · H help · P pause · "
        "Del twice erase profile · F12 screenshot",
        (10, BOTTOM.y + 28),
        16,
        DIM,
    )
    if world.time < ui.toast_until and ui.toast:
        img = art.text(ui.toast, 20, INK)
        box = img.get_rect(midtop=(PANEL.x // 2, TOP + 10)).inflate(20, 10)
        pygame.draw.rect(screen, (20, 22, 32), box, border_radius=6)
        pygame.draw.rect(screen, GOOD if session.adapting else BAD, box, 1, border_radius=6)
        screen.blit(img, img.get_rect(center=box.center))
