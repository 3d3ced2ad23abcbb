"""Coalesced calls of a blocking function in the event loop's executor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Coalesced(Generic[T]):
    """Run `fn` in the default executor, one run at a time. A call made while a run is in
    progress waits for the next run, which starts when the current one ends and answers
    every call made meanwhile: so pipelined calls cost at most two runs, and each call's
    answer comes from a run that started after it was made (what `flush` needs)."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self.fn = fn
        self.runs = 0  # runs started
        self._running: asyncio.Future[T] | None = None
        self._next: asyncio.Future[T] | None = None  # answered by the run after the current one

    def __call__(self) -> asyncio.Future[T]:
        if self._running is None:
            return self._start()
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        return self._next

    def _start(self) -> asyncio.Future[T]:
        self.runs += 1
        self._running = asyncio.get_running_loop().run_in_executor(None, self.fn)
        self._running.add_done_callback(self._ended)
        return self._running

    def _ended(self, _: asyncio.Future[T]) -> None:
        self._running = None
        waiting, self._next = self._next, None
        if waiting is not None and not waiting.cancelled():
            self._start().add_done_callback(lambda run: _copy(run, waiting))


def _copy(source: asyncio.Future[T], target: asyncio.Future[T]) -> None:
    if target.cancelled():
        return
    if source.cancelled():
        target.cancel()
    elif (exc := source.exception()) is not None:
        target.set_exception(exc)
    else:
        target.set_result(source.result())
