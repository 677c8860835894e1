"""Requests in flight: the future every request returns (``.result(timeout)`` in threads,
``await`` in asyncio), and the table of those awaiting an answer, by deadline."""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import math
import threading
import time
from typing import Any, Callable, Generator, TypeVar

from ._handoff import about_to_block
from .errors import Timeout

__all__ = ["ReplyFuture", "PendingRequests", "fail"]

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

    ``cancel()`` on a call still pending returns True, fails the future with
    ``CancelledError`` and tells the handler's side, whose handler sees
    ``event.cancelled`` (or, ``async def``, is cancelled); cancelling an
    asyncio task that awaits the future does the same. On a call already
    answered it returns False and changes nothing.

    Generic in what it resolves to: requests give ``ReplyFuture[Any]`` (the
    peer's reply can be anything), ``render_msg_to_render`` ``ReplyFuture[None]``.
    """

    def __init__(
        self,
        description: str = "request",
        reader: Callable[["ReplyFuture[_T]", float | None], float | None] | None = None,
        on_cancel: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.description = description
        self._on_cancel = on_cancel  # the node's: forget the call, and tell its handler
        # A node that can read the answer on the waiting thread itself, sparing a thread
        # handoff: reader(future, timeout) waits and returns the time left (None: no limit).
        self._reader = reader
        # When the request itself times out (time.monotonic()): set by the node's table of
        # pending requests, so a reader never waits past it.
        self.deadline = math.inf

    def result(self, timeout: float | None = None) -> _T:
        """The answer, waiting at most ``timeout`` s (``None`` or ``inf``: as long as the request lives)."""
        wait = _wait(timeout)
        if not self.done():
            about_to_block()  # a handler on its loop's thread waits: the loop goes on elsewhere
            reader = self._reader
            if reader is not None:
                wait = _wait(reader(self, wait))
        try:
            return super().result(wait)
        except concurrent.futures.TimeoutError:
            if self.done():
                raise
            raise Timeout(f"{self.description}: no answer within {timeout} s") from None

    def cancel(self) -> bool:
        """Give up the call: True if it was still pending (its handler is told), else False."""
        if not super().cancel():
            return False
        if self._on_cancel is not None:
            self._on_cancel()
        return True

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self.done():
            about_to_block()
        try:
            return super().exception(_wait(timeout))
        except concurrent.futures.TimeoutError:
            raise Timeout(f"{self.description}: no answer within {timeout} s") from None

    def __await__(self) -> Generator[Any, None, _T]:
        return asyncio.wrap_future(self).__await__()


def fail(future: ReplyFuture[Any], exc: BaseException) -> None:
    """Fail ``future`` with ``exc`` unless it has ended (answered, or cancelled by its caller:
    which may happen at any moment, from any thread)."""
    if not future.done():
        try:
            future.set_exception(exc)
        except concurrent.futures.InvalidStateError:
            pass


_EXPIRE_BATCH = 500


class PendingRequests:
    """Requests awaiting an answer, by message id, each with its deadline.

    Any thread may add; the loop thread pops answers and expires the overdue
    ones with ``Timeout``. Deadlines sit in a heap beside the table, so
    expiring ``n`` calls costs ``O(n log n)`` in all, never a scan of the
    whole table per expiry; one timer is armed for the earliest. Entries of
    answered requests leave the heap lazily, and the heap is rebuilt when
    they outnumber the live ones, so it stays within a constant factor of
    what is pending. ``on_expired(msg_id, target)`` runs (on the loop) for
    each request that timed out, so the caller can tell the callee.
    """

    def __init__(self, loop: Any, on_expired: Callable[[int, str | None], None] | None = None) -> None:
        self._items: dict[int, tuple[ReplyFuture[Any], float, float, str | None]] = {}
        self._heap: list[tuple[float, int]] = []
        self._next = math.inf  # the deadline a timer is armed for
        self._lock = threading.Lock()  # the heap and _next; the dict is changed in single steps
        self._loop = loop
        self._on_expired = on_expired

    def add(self, msg_id: int, future: ReplyFuture[Any], timeout: float, target: str | None = "") -> float:
        """Track ``future`` until ``timeout`` s from now (``inf``: no limit); returns that deadline
        (``time.monotonic()``)."""
        deadline = future.deadline = time.monotonic() + timeout
        self._items[msg_id] = (future, deadline, timeout, target)
        if deadline < math.inf:
            with self._lock:
                heapq.heappush(self._heap, (deadline, msg_id))
                arm = deadline < self._next
                if arm:
                    self._next = deadline
            if arm:
                self._loop.call_later(max(0.0, deadline - time.monotonic()), self._expire)
        return deadline

    def pop(self, msg_id: int, answered_by: str | None = None) -> ReplyFuture[Any] | None:
        """The future of request ``msg_id``, no longer pending; None if there is none (it timed
        out, or was never made), or if ``answered_by`` is given and is not the one asked."""
        if answered_by is None:
            entry = self._items.pop(msg_id, None)
        else:
            entry = self._items.get(msg_id)
            if entry is None or entry[3] != answered_by:
                return None
            if self._items.pop(msg_id, None) is None:  # another thread took it meanwhile
                return None
        if entry is None:
            return None
        if len(self._heap) > 2 * len(self._items) + 64:  # answered calls: keep the heap in proportion
            self._compact()
        return entry[0]

    def _compact(self) -> None:
        with self._lock:
            self._compact_locked()

    def _compact_locked(self) -> None:
        """Drop answered calls' deadlines from the heap once they outnumber the pending ones."""
        if len(self._heap) > 2 * len(self._items) + 64:
            self._heap[:] = [(entry[1], msg_id) for msg_id, entry in list(self._items.items()) if entry[1] < math.inf]
            heapq.heapify(self._heap)

    def fail_all(self, make_error: Callable[[ReplyFuture[Any]], BaseException], target: str | None = None) -> None:
        """Fail every pending future (of ``target`` only, if given) with ``make_error(future)``."""
        for msg_id, (future, _, _, to) in list(self._items.items()):
            if target is None or to == target:
                self._items.pop(msg_id, None)
                fail(future, make_error(future))

    def __len__(self) -> int:
        return len(self._items)

    def _expire(self) -> None:
        now = time.monotonic()
        expired: list[tuple[int, ReplyFuture[Any], float, str | None]] = []
        with self._lock:
            if now >= self._next:  # the armed timer fired (not a stale later one): none is armed now
                self._next = math.inf
            heap, items = self._heap, self._items
            while heap and heap[0][0] <= now and len(expired) < _EXPIRE_BATCH:
                deadline, msg_id = heapq.heappop(heap)
                entry = items.get(msg_id)
                if entry is not None and entry[1] == deadline:
                    del items[msg_id]
                    expired.append((msg_id, entry[0], entry[2], entry[3]))
            self._compact_locked()
            soonest = heap[0][0] if heap else math.inf
            if soonest <= now:  # more are due: after the loop's next turn (sockets, heartbeats) first
                soonest = now
            arm = soonest < self._next  # one armed timer at a time: expiries never multiply timers
            if arm:
                self._next = soonest
        if arm:
            self._loop.call_later(max(0.0, soonest - time.monotonic()), self._expire)
        for msg_id, future, timeout, target in expired:
            fail(future, Timeout(f"{future.description}: no answer within {timeout} s"))
            if self._on_expired is not None:
                self._on_expired(msg_id, target)
