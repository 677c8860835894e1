"""The future every request returns: ``.result(timeout)`` in threads, ``await`` in asyncio."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Generator

from .errors import Timeout

__all__ = ["ReplyFuture"]


class ReplyFuture(concurrent.futures.Future):
    """A ``concurrent.futures.Future`` that can also be awaited.

    The node fails it with ``zprokit.Timeout`` when the request's own timeout
    expires, so it never stays pending forever. ``result(timeout)`` with a
    shorter wait raises ``zprokit.Timeout`` too (a ``TimeoutError``) and leaves
    the request running.
    """

    def __init__(self, description: str = "request") -> None:
        super().__init__()
        self.description = description

    def result(self, timeout: float | None = None) -> Any:
        try:
            return super().result(timeout)
        except concurrent.futures.TimeoutError:
            if self.done():
                raise
            raise Timeout(f"{self.description}: no answer within {timeout} s") from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return super().exception(timeout)
        except concurrent.futures.TimeoutError:
            raise Timeout(f"{self.description}: no answer within {timeout} s") from None

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()
