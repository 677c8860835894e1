"""The future every request returns: ``.result(timeout)`` in threads, ``await`` in asyncio."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Callable, Generator, TypeVar

from .errors import Timeout

__all__ = ["ReplyFuture"]

_T = TypeVar("_T")


def _wait(timeout: float | None) -> float | None:
    # A lock refuses waits over threading.TIMEOUT_MAX (OverflowError): those mean "no limit".
    return None if timeout is None or timeout >= threading.TIMEOUT_MAX else timeout


class ReplyFuture(concurrent.futures.Future[_T]):
    """A ``concurrent.futures.Future`` that can also be awaited.

    The node fails it with ``zprokit.Timeout`` when the request's own timeout
    expires, so it never stays pending forever. ``result(timeout)`` with a
    shorter wait raises ``zprokit.Timeout`` too (a ``TimeoutError``) and leaves
    the request running.

    Generic in what it resolves to: requests give ``ReplyFuture[Any]`` (the
    peer's reply can be anything), ``render_msg_to_render`` ``ReplyFuture[None]``.
    """

    def __init__(self, description: str = "request") -> None:
        super().__init__()
        self.description = description
        # Set by a node that can read the answer on the waiting thread itself, sparing a
        # thread handoff: reader(future, timeout) waits and returns the time left (None: no limit).
        self._reader: Callable[["ReplyFuture[_T]", float | None], float | None] | None = None
        self._deadline = 0.0  # when the request itself times out (time.monotonic()), for a reader

    def result(self, timeout: float | None = None) -> _T:
        """The answer, waiting at most ``timeout`` s (``None`` or ``inf``: as long as the request lives)."""
        wait = _wait(timeout)
        reader = self._reader
        if reader is not None and not self.done():
            wait = _wait(reader(self, wait))
        try:
            return super().result(wait)
        except concurrent.futures.TimeoutError:
            if self.done():
                raise
            raise Timeout(f"{self.description}: no answer within {timeout} s") from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return super().exception(_wait(timeout))
        except concurrent.futures.TimeoutError:
            raise Timeout(f"{self.description}: no answer within {timeout} s") from None

    def __await__(self) -> Generator[Any, None, _T]:
        return asyncio.wrap_future(self).__await__()
