"""A call being served: whether its caller gave up, and how to stop it.

The I/O thread registers each call it hands to a handler (by the caller's
session or name and its message id), so that a CANCEL, the caller's timeout
or the caller leaving reaches it: a call not started yet never starts; a
running sync handler sees ``event.cancelled``; an ``async def`` handler's
task is cancelled. The entry leaves when the handler ends.
"""

from __future__ import annotations

from typing import Callable

from .events import Cancelled

__all__ = ["ServedCall", "deadline_of", "timeout_ms"]

_MAX_MS = 2**32 - 1  # the header's timeout_ms is a u32: longer timeouts travel as "no limit"


class ServedCall:
    """A call handed to a handler: ``cancel()`` stops it if it has not started, and tells it if it has."""

    __slots__ = ("started", "cancelled", "token", "stop", "more")

    def __init__(self) -> None:
        self.started = False
        self.cancelled = False
        self.token = Cancelled()
        self.stop: Callable[[], object] | None = None  # cancels an async handler's task, wakes a producer
        self.more: Callable[[int], None] | None = None  # a stream's producer: its consumer's MORE

    def cancel(self) -> bool:
        """Stop it; True if it had not started (it never will: forget it now)."""
        self.cancelled = True
        self.token.set()
        stop = self.stop
        if stop is not None:
            stop()
        return not self.started


def timeout_ms(timeout: float) -> int:
    """A caller's timeout (s; ``inf``: none) as the header carries it: ms, 0 for none."""
    if timeout == float("inf") or timeout * 1000 >= _MAX_MS:
        return 0
    return max(1, int(timeout * 1000))


def deadline_of(ms: int, now: float) -> float | None:
    """The handler's ``event.deadline`` (a ``time.time()`` value) for a call with ``timeout_ms``."""
    return None if ms == 0 else now + ms / 1000
