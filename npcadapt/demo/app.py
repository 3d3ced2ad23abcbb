"""``npcadapt demo``: the game window and the headless bot runner, driven by a :class:`DemoOptions`.

Window mode: pick a profile, play; adapters are saved on quit (and when pausing) and
loaded next time. Headless mode (``--headless``, or automatically when there is no display)
runs the same game with the dummy video driver and a scripted bot at full speed (fixed
1/60 s steps, no sleeping), then prints how each NPC adapted and the frame-time figures,
and saves a screenshot. ``--connect HOST:PORT`` plays through a running ``npcadapt serve``.

Frame time is the work of one frame: input, world rules, feedback, NPC decisions, HUD
probabilities, online updates where they run in this thread, and drawing. In the window
online updates run in a background thread; headless they run synchronously between
steps (at most one player-archetype update per frame) so that adaptation keeps pace with
simulated time and runs are reproducible; ``--realtime`` paces headless at 60 frames/s
with the background thread instead, exactly like the window.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from .backend import DEFAULT_ONLINE, DEMO_SETTINGS, Backend, LocalBackend, SocketBackend, parse_address
from .bots import Bot, gain_against, parse_bot
from .options import DemoOptions
from .profiles import Profiles
from .session import KL_OBSERVATIONS, Session, describe_prior
from .world import PlayerInput, World

log = logging.getLogger(__name__)
FPS = 60
TARGET_MS = 1000 / FPS


class FrameStats:
    """Frame work times in ms: all of them, and a recent window for the HUD."""

    def __init__(self) -> None:
        self.all: list[float] = []
        self.recent: deque[float] = deque(maxlen=300)

    def add(self, ms: float) -> None:
        self.all.append(ms)
        self.recent.append(ms)

    def recent_p50_p95(self) -> tuple[float, float]:
        if not self.recent:
            return 0.0, 0.0
        a = np.fromiter(self.recent, float)
        return float(np.percentile(a, 50)), float(np.percentile(a, 95))

    def summary(self) -> dict:
        a = np.asarray(self.all or [0.0])
        return {
            "frames": len(self.all),
            "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p95_ms": round(float(np.percentile(a, 95)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3),
            "max_ms": round(float(a.max()), 3),
            "over_budget": int((a > TARGET_MS).sum()),
            "target_ms": round(TARGET_MS, 2),
        }


def has_display() -> bool:
    if os.environ.get("SDL_VIDEODRIVER") in ("dummy", "offscreen"):
        return False
    return sys.platform in ("win32", "darwin") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def init_pygame(headless: bool):
    """Import and start pygame's display and fonts (no audio); dummy video driver if headless."""
    if headless:
        os.environ["SDL_VIDEODRIVER"] = "dummy"
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    pygame.display.init()
    pygame.font.init()
    from .render import SIZE

    screen = pygame.display.set_mode(SIZE)
    pygame.display.set_caption("npcadapt demo: NPCs that learn how you play")
    return pygame, screen


def open_backend(options: DemoOptions, *, train: str) -> Backend:
    if options.connect:
        host, port = parse_address(options.connect)
        return SocketBackend(host, port, token=options.token)
    import torch

    torch.set_num_threads(1)  # tiny batches: one thread is fastest and never stalls on a busy core
    online = replace(options.online, **{k: getattr(DEFAULT_ONLINE, k) for k in DEMO_SETTINGS})  # minutes-long sessions
    return LocalBackend(options.data, seed=options.seed, online=online, train=train)


def start_session(options: DemoOptions, name: str, *, train: str) -> tuple[Session, str]:
    """Open the profile, the backend and a fresh world; returns the session and the profile name."""
    profile = Profiles(options.data).open(name)
    world = World(options.duelists, options.merchants, options.companions, options.hagglers, seed=options.seed)
    backend = open_backend(options, train=train)
    try:
        session = Session(world, backend, profile.player, adapting=options.adapt)
    except BaseException:
        backend.close()
        raise
    return session, profile.name


# -- headless ------------------------------------------------------------------------------------
def run_headless(options: DemoOptions) -> dict:
    """Play `options.seconds` of game time with a bot; returns the summary (also printed by main)."""
    personas = parse_bot(options.bot)
    session, name = start_session(
        options, options.profile or f"bot {options.bot}"[:24], train="background" if options.realtime else "sync"
    )
    pygame = None
    try:
        pygame, screen = init_pygame(headless=True)
        from .hud import Ui, pick_npc
        from .render import Art, WorldView

        art = Art()
        view = WorldView(art, session.world)
        ui = Ui(profile=name)
        bot = Bot(personas, seed=options.seed)
        stats = FrameStats()
        busy = None
        dt = 1.0 / FPS
        next_frame = time.perf_counter()
        for i in range(round(options.seconds * FPS)):
            t0 = time.perf_counter()
            session.step(dt, bot.control(session.world))
            draw(screen, art, view, session, ui)
            pygame.display.flip()
            stats.add((time.perf_counter() - t0) * 1e3)
            if i % 30 == 0:
                ui.frame_ms = stats.recent_p50_p95()
                shown = pick_npc(session, ui)
                if session.world.engaged_duelists() >= 3 and shown is not None and shown.archetype == "duelist":
                    busy = screen.copy()
            if options.realtime:
                next_frame += dt
                time.sleep(max(0.0, next_frame - time.perf_counter()))
        if options.screenshot:
            Path(options.screenshot).parent.mkdir(parents=True, exist_ok=True)
            pygame.image.save(busy if busy is not None else screen, options.screenshot)
        session.backend.flush()
        summary = session.summary()
        gains = {a: gain_against(session.backend, a, session.player, personas[a]) for a in session.archetypes}
        summary.update(
            profile=name,
            bot=personas,
            gain_vs_bot=gains,
            frame_time=stats.summary(),
            screenshot=options.screenshot,
            adapting_npcs=len(session.world.npcs),
            realtime=bool(options.realtime),
            training="background thread" if options.realtime or options.connect else "synchronous, in frame",
        )
    finally:
        session.backend.close()
        if pygame is not None:
            pygame.quit()
    if options.json_out:
        Path(options.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(options.json_out).write_text(json.dumps(summary, indent=1))
    return summary


def format_summary(s: dict) -> str:
    ft = s["frame_time"]
    bot = ", ".join(f"{a}={p}" for a, p in s["bot"].items())
    lines = [
        (
            f"npcadapt demo (headless): profile {s['profile']!r} (player id {s['player']!r}), bot {bot}, "
            f"{s['game_seconds']:.0f} s of game time, {s['backend']}"
        ),
        f"{'NPC':<12} {'archetype':<10} {'answers':>7}  {'reward early -> late':>20}  {'adapter':>10}  {'updates':>7}  "
        f"{'KL':>6}  {'gain':>5}  prior: cohort, sure, served share",
    ]
    for r in s["npcs"]:
        r = {**r, "gain": s.get("gain_vs_bot", {}).get(r["archetype"])}
        versions = f"v{r['version_start']} -> v{r['version']}"
        early = "-" if r["reward_early"] is None else f"{r['reward_early']:+.2f} -> {r['reward_late']:+.2f}"
        kl = "-" if r["kl"] is None else f"{max(r['kl'], 0.0):.2f}"
        gain = "-" if r["gain"] is None else f"{r['gain']:+.2f}"
        lines.append(
            f"{r['name']:<12} {r['archetype']:<10} {r['answered']:>7}  {early:>20}  "
            f"{versions:>10}  {r['updates']:>7}  {kl:>6}  {gain:>5}  {describe_prior(r.get('prior'))}"
        )
    lines.append(
        f"(KL: mean KL(adapted || base) over the NPC's last {KL_OBSERVATIONS} observations; gain: exact share of "
        "the gap from the base to the bot persona's best responses closed by the NPC's policy now, from the sim env)"
    )
    lines.append(
        f"frame time ({s['training']} updates, world + inference + HUD + drawing): p50 {ft['p50_ms']:.2f} ms, "
        f"p95 {ft['p95_ms']:.2f} ms, p99 {ft['p99_ms']:.2f} ms, max {ft['max_ms']:.1f} ms over {ft['frames']} frames "
        f"with {s['adapting_npcs']} adapting NPCs; {ft['over_budget']} frames over {ft['target_ms']} ms"
    )
    if s.get("screenshot"):
        lines.append(f"screenshot: {s['screenshot']}")
    return "\n".join(lines)


# -- window --------------------------------------------------------------------------------------
def draw(screen, art, view, session: Session, ui) -> None:
    from .hud import draw_bottom, draw_panel, draw_top, pick_npc

    view.draw(screen, pick_npc(session, ui))
    draw_top(screen, art, session, ui)
    draw_panel(screen, art, session, ui)
    draw_bottom(screen, art, session, ui)


def run_window(options: DemoOptions) -> int:
    pygame, screen = init_pygame(headless=False)
    from .hud import Ui
    from .render import Art, WorldView
    from .screens import draw_help, draw_pause, profile_prompt

    art = Art()
    preview = World(options.duelists, options.merchants, options.companions, options.hagglers, seed=options.seed)
    backdrop = WorldView(art, preview).backgrounds[0]
    name = options.profile or profile_prompt(screen, art, Profiles(options.data), backdrop)
    if name is None:
        pygame.quit()
        return 0
    session, name = start_session(options, name, train="background")
    view = WorldView(art, session.world)
    ui = Ui(profile=name)
    ui.say(f"Welcome, {name}! H shows the keys.", 0.0, 4.0)
    stats, clock = FrameStats(), pygame.time.Clock()
    saved, running, frame = False, True, 0
    try:
        while running:
            dt = min(clock.tick(FPS) / 1000.0, 0.05)
            t0 = time.perf_counter()
            inp = PlayerInput()
            for event in pygame.event.get():
                if event.type == pygame.QUIT:
                    running = False
                elif event.type == pygame.KEYDOWN:
                    running, saved = _key(pygame, event, session, ui, inp, saved)
                elif event.type == pygame.MOUSEBUTTONDOWN and event.button == 1:
                    _click(event.pos, session, ui)
            if not ui.paused and not ui.help:
                inp.move = _direction(pygame)
                session.step(dt, inp)
                saved = False
            draw(screen, art, view, session, ui)
            if ui.help:
                draw_help(screen, art)
            elif ui.paused:
                draw_pause(screen, art, saved)
            pygame.display.flip()
            stats.add((time.perf_counter() - t0) * 1e3)
            frame += 1
            if frame % 30 == 0:
                ui.frame_ms = stats.recent_p50_p95()
    finally:
        session.backend.close()
        pygame.quit()
    ft = stats.summary()
    print(
        f"saved {name}'s adapters; frame time p50 {ft['p50_ms']:.2f} ms, p95 {ft['p95_ms']:.2f} ms over {ft['frames']} frames"
    )
    return 0


def _direction(pygame) -> tuple[float, float]:
    k = pygame.key.get_pressed()
    x = (k[pygame.K_d] or k[pygame.K_RIGHT]) - (k[pygame.K_a] or k[pygame.K_LEFT])
    y = (k[pygame.K_s] or k[pygame.K_DOWN]) - (k[pygame.K_w] or k[pygame.K_UP])
    return float(x), float(y)


def _key(pygame, event, session: Session, ui, inp: PlayerInput, saved: bool) -> tuple[bool, bool]:
    """Handle one key press; returns (keep running, saved)."""
    key, now = event.key, session.world.time
    feelings = {
        pygame.K_EQUALS: "likes",
        pygame.K_PLUS: "likes",
        pygame.K_KP_PLUS: "likes",
        pygame.K_MINUS: "dislikes",
        pygame.K_KP_MINUS: "dislikes",
        pygame.K_0: "unmoved",
        pygame.K_KP0: "unmoved",
    }  # a haggler's line
    moves = {getattr(pygame, f"K_{i + 1}"): i for i in range(8)} | {
        getattr(pygame, f"K_KP{i + 1}"): i for i in range(8)
    }
    if key in (pygame.K_h, pygame.K_F1):
        ui.help = not ui.help
    elif key in (pygame.K_p, pygame.K_ESCAPE):
        if ui.help:
            ui.help = False
        else:
            ui.paused = not ui.paused
            if ui.paused:
                session.backend.flush()
                saved = True
    elif key == pygame.K_q and ui.paused:
        return False, saved
    elif key == pygame.K_F12:
        path = Path("runs/demo") / f"screenshot-{time.strftime('%Y%m%d-%H%M%S')}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pygame.image.save(pygame.display.get_surface(), str(path))
        ui.say(f"saved {path}", now)
    elif key == pygame.K_DELETE:
        if now < ui.erase_armed_until or ui.paused:
            session.erase()
            ui.erase_armed_until = 0.0
            ui.say(f"Erased {ui.profile}'s adapters: the NPCs forgot you", now)
        else:
            ui.erase_armed_until = now + 3.0
            ui.say(f"Press Delete again to erase {ui.profile}'s adapters", now, 3.0)
    elif ui.paused or ui.help:
        return True, saved
    elif key in moves:
        inp.duel_move = moves[key]
    elif key in (pygame.K_b, pygame.K_n):
        inp.reply = "buy" if key == pygame.K_b else "no"
    elif key in (pygame.K_t, pygame.K_x):
        inp.reaction = "thanks" if key == pygame.K_t else "stop"
    elif key in feelings:
        inp.feeling = feelings[key]
    elif key == pygame.K_m:
        session.set_adapting(not session.adapting)
        ui.say(
            "Adaptation ON: NPCs use what they learned about you"
            if session.adapting
            else "Adaptation OFF: every NPC plays the base policy",
            now,
        )
    elif key == pygame.K_TAB:
        ids = [n.id for n in session.world.npcs]
        step = -1 if event.mod & pygame.KMOD_SHIFT else 1
        ui.selected = ids[(ids.index(ui.selected) + step) % len(ids)] if ui.selected in ids else ids[0]
    return True, saved


def _click(pos: tuple[int, int], session: Session, ui) -> None:
    from .render import TOP

    x, y = pos[0], pos[1] - TOP
    best = min(session.world.npcs, key=lambda n: math.hypot(n.x - x, n.y - 20 - y), default=None)
    if best is not None and math.hypot(best.x - x, best.y - 20 - y) < 36:
        ui.selected = best.id
    elif pos[0] < 960:
        ui.selected = None


def main(options: DemoOptions) -> int:
    """Entry point of ``npcadapt demo``; returns the exit status."""
    if options.connect:
        parse_address(options.connect)
    parse_bot(options.bot)
    if not options.headless and not has_display():
        print(
            "npcadapt demo: no display found, running headless with a bot "
            f"({options.bot}, {options.seconds:.0f} s); pass --headless to silence this",
            file=sys.stderr,
        )
        options = replace(options, headless=True, screenshot=options.screenshot or "runs/demo/screenshot.png")
    if options.headless:
        if options.seconds <= 0:
            raise InvalidInputError(f"--seconds must be positive, got {options.seconds}")
        print(format_summary(run_headless(options)))
        return 0
    return run_window(options)
