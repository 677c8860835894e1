"""Small pieces shared by Main and Window."""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable

from ._futures import ReplyFuture
from .errors import Timeout

DEFAULT_TIMEOUT = 30.0  # seconds; every request has one, so nothing waits forever by default
MAIN_NAME = "main"


def fail(future: ReplyFuture, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def check_channel(channel: str, what: str = "channel") -> None:
    if not isinstance(channel, str):
        raise TypeError(f"{what} must be a str, not {type(channel).__name__}")


def check_timeout(timeout: float) -> float:
    if timeout is None or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


class PendingRequests:
    """Requests awaiting an answer, by message id, each with its deadline.

    Any thread may add; the loop thread pops answers and expires the overdue
    ones with ``Timeout``. Deadlines are kept in the entries, not a timer per
    request: one timer is armed for the earliest, and a scan on expiry arms
    the next, so a million answered requests leave nothing behind.
    """

    def __init__(self, loop: Any) -> None:
        self._items: dict[int, tuple[ReplyFuture, float, float, str]] = {}
        self._next = math.inf
        self._lock = threading.Lock()
        self._loop = loop

    def add(self, msg_id: int, future: ReplyFuture, timeout: float, target: str = "") -> float:
        """Track ``future`` until ``timeout`` s from now; returns that deadline (``time.monotonic()``)."""
        deadline = time.monotonic() + timeout
        self._items[msg_id] = (future, deadline, timeout, target)
        if deadline < self._next:
            self._arm(deadline)
        return deadline

    def pop(self, msg_id: int) -> tuple[ReplyFuture, str] | None:
        entry = self._items.pop(msg_id, None)
        return None if entry is None else (entry[0], entry[3])

    def fail_all(self, make_error: Callable[[ReplyFuture], BaseException], target: str | None = None) -> None:
        """Fail every pending future (of ``target`` only, if given) with ``make_error(future)``."""
        for msg_id, (future, _, _, to) in list(self._items.items()):
            if target is None or to == target:
                self._items.pop(msg_id, None)
                fail(future, make_error(future))

    def __len__(self) -> int:
        return len(self._items)

    def _arm(self, deadline: float) -> None:
        with self._lock:
            if deadline < self._next:
                self._next = deadline
                self._loop.call_later(max(0.0, deadline - time.monotonic()), self._expire)

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._next = math.inf
        soonest = math.inf
        for msg_id, (future, deadline, timeout, _) in list(self._items.items()):
            if deadline <= now:
                self._items.pop(msg_id, None)
                fail(future, Timeout(f"{future.description}: no answer within {timeout} s"))
            else:
                soonest = min(soonest, deadline)
        if soonest < math.inf:
            self._arm(soonest)
