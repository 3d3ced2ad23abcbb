"""Shared pygame drawing for the sim envs: canvas, bars, labels, the human window.

pygame is imported inside each function, so importing the envs never needs it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

WIDTH, HEIGHT = 480, 320
BACKGROUND = (28, 30, 38)
TEXT = (235, 235, 235)

_fonts: dict[int, Any] = {}


def new_surface(width: int = WIDTH, height: int = HEIGHT) -> Any:
    """An off-screen surface filled with the background colour."""
    import pygame

    surface = pygame.Surface((width, height))
    surface.fill(BACKGROUND)
    return surface


def to_array(surface: Any) -> np.ndarray:
    """(H, W, 3) uint8 copy of a surface."""
    import pygame

    return np.ascontiguousarray(np.transpose(pygame.surfarray.array3d(surface), (1, 0, 2)))


def bar(
    surface: Any,
    rect: tuple[int, int, int, int],
    fraction: float,
    colour: tuple[int, int, int],
    back: tuple[int, int, int] = (70, 70, 80),
) -> None:
    """A horizontal bar ``rect`` filled to ``fraction`` (0..1)."""
    import pygame

    x, y, w, h = rect
    pygame.draw.rect(surface, back, rect)
    fill = round(w * min(max(fraction, 0.0), 1.0))
    if fill:
        pygame.draw.rect(surface, colour, (x, y, fill, h))
    pygame.draw.rect(surface, TEXT, rect, 1)


def label(
    surface: Any,
    text: str,
    pos: tuple[int, int],
    size: int = 18,
    colour: tuple[int, int, int] = TEXT,
) -> None:
    """Text at ``pos`` (top-left); silently skipped where pygame has no font support."""
    import pygame

    try:
        if size not in _fonts:
            if not pygame.font.get_init():
                pygame.font.init()
            _fonts[size] = pygame.font.Font(None, size)
        surface.blit(_fonts[size].render(text, True, colour), pos)
    except (pygame.error, ImportError, NotImplementedError):
        return


def reward_strip(surface: Any, scene: dict[str, Any], action_names: tuple[str, ...]) -> None:
    """Bottom strip common to all envs: round progress bar, last action, response, reward."""
    last = scene["last"]
    bar(surface, (10, HEIGHT - 22, WIDTH - 20, 12), scene["progress"], (120, 160, 255))
    if last:
        reward = last["reward"]
        colour = (80, 200, 100) if reward > 0 else (220, 80, 70) if reward < 0 else (180, 180, 180)
        half = (WIDTH - 20) // 2
        width = int(half * min(abs(reward), 1.0))
        x = 10 + half if reward >= 0 else 10 + half - width
        import pygame

        pygame.draw.rect(surface, colour, (x, HEIGHT - 44, max(width, 1), 14))
        label(surface, f"NPC: {action_names[last['action']]}", (10, HEIGHT - 66), 18)
        label(surface, f"reward {reward:+.2f}", (WIDTH - 120, HEIGHT - 66), 18, colour)


class Window:
    """A pygame display window that shows finished surfaces at a fixed frame rate."""

    def __init__(self, title: str) -> None:
        import pygame

        pygame.display.init()
        self._screen = pygame.display.set_mode((WIDTH, HEIGHT))
        pygame.display.set_caption(title)
        self._clock = pygame.time.Clock()

    def show(self, surface: Any, fps: int) -> None:
        import pygame

        pygame.event.pump()
        self._screen.blit(surface, (0, 0))
        pygame.display.flip()
        self._clock.tick(fps)

    def close(self) -> None:
        import pygame

        pygame.display.quit()
