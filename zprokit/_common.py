"""Small pieces shared by Main and Window: argument checks, the fork generation, pending requests."""

from __future__ import annotations

import heapq
import math
import os
import threading
import time
from typing import Any, Callable

from ._futures import ReplyFuture
from .errors import Closed, Timeout

DEFAULT_TIMEOUT = 30.0  # seconds; every request has one, so nothing waits forever by default
MAIN_NAME = "main"
MAX_STR = 0xFFFF  # a channel, topic or name is at most this many bytes of UTF-8 (the header's length field)
# The longest wait handed to a poll or a lock at once: longer (or infinite) waits are made of such
# waits. epoll and zmq_poll take an int of milliseconds, and a lock refuses more than TIMEOUT_MAX.
MAX_WAIT = 3600.0
# ZeroMQ takes heartbeat intervals and timeouts as an int of milliseconds.
MAX_LIVENESS_WINDOW = (2**31 - 1) / 1000


class _Forks:
    """How many times this process's line has forked: a node made in an earlier generation
    belongs to a parent, and its sockets and threads are not this process's to use."""

    generation = 0


def _after_fork_in_child() -> None:
    _Forks.generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def fork_generation() -> int:
    return _Forks.generation


def check_forked(born: int, what: str, pid: int) -> None:
    """Raise ``Closed`` if the node made in fork generation ``born`` (by process ``pid``) is used
    in a forked child: as pyzmq does for a forked context, a clear error at once, not a hang."""
    if _Forks.generation != born:
        raise Closed(
            f"{what} was made in process {pid} and cannot be used in a child forked from it "
            f"(this is process {os.getpid()}); make a new one in the child"
        )


def check_count(value: Any, what: str, unit: str, optional: bool = False) -> Any:
    """A positive whole number of ``unit`` (``None`` too, if ``optional``); else ``ValueError`` at once."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive number of {unit}, got {short(value)}")
    return value


def closed_by_failure(description: str, exc: BaseException) -> Closed:
    """The ``Closed`` a pending call (or a handshake) fails with when its node's I/O thread failed."""
    error = Closed(f"{description}: {exc!r}")
    error.__cause__ = exc
    return error


class QueuedCall:
    """A call waiting in a handler pool; ``cancelled`` once its caller gave up (CANCEL): never started."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False


def fail(future: ReplyFuture[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def check_channel(channel: str, what: str = "channel") -> None:
    """A channel or topic is a str of at most 65535 bytes of UTF-8; else ``TypeError``/``ValueError`` at once."""
    if not isinstance(channel, str):
        raise TypeError(f"{what} must be a str, not {type(channel).__name__}")
    if len(channel) > MAX_STR // 4 and len(channel.encode("utf-8", "surrogatepass")) > MAX_STR:
        raise ValueError(f"{what} is longer than {MAX_STR} bytes of UTF-8: {short(channel)}")


_TRANSPORTS = ("tcp://", "ipc://", "inproc://")


def check_endpoint(endpoint: Any, *, bind: bool) -> str:
    """A ZeroMQ endpoint with a transport zprokit uses; else a one-line ``ValueError`` at once.

    Caught here rather than in the I/O thread, where it used to end in a ``Timeout``.
    """
    example = "tcp://127.0.0.1:5555" + (" (port 0: any free port)" if bind else "")
    if not isinstance(endpoint, str) or not endpoint.startswith(_TRANSPORTS):
        raise ValueError(f"endpoint {short(endpoint)} has no known transport: write {example}, "
                         "ipc:///path/to/socket or inproc://name")
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        if not host or not (port == "*" or (port.isdigit() and int(port) < 65536)) or (port in ("0", "*") and not bind):
            raise ValueError(f"endpoint {short(endpoint)} needs a host and a port: write {example}")
    elif endpoint.endswith("://"):
        raise ValueError(f"endpoint {short(endpoint)} names no address: write {example}")
    return endpoint


def short(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to about ``limit`` characters: error messages quote bad values, not whole books."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_timeout(timeout: float | None, what: str = "timeout") -> float:
    """A request timeout in seconds: positive; ``None`` or ``math.inf`` means no limit (``inf``)."""
    if timeout is None:
        return math.inf
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"{what} must be a positive number of seconds (math.inf: no limit), got {short(timeout)}")
    return float(timeout)


def check_interval(interval: float, what: str) -> float:
    """A heartbeat or back-off interval: positive and finite, else ``ValueError`` at construction."""
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 < interval < math.inf:
        raise ValueError(f"{what} must be a positive, finite number of seconds, got {short(interval)}")
    return float(interval)


def check_liveness(heartbeat: float, liveness: int) -> tuple[float, int]:
    """``heartbeat`` and ``liveness`` that can work: a peer silent for ``heartbeat * liveness`` s is dead."""
    heartbeat = check_interval(heartbeat, "heartbeat")
    if isinstance(liveness, bool) or not isinstance(liveness, int) or liveness < 1:
        raise ValueError(f"liveness must be a whole number of heartbeats, at least 1, got {short(liveness)}")
    if heartbeat * liveness > MAX_LIVENESS_WINDOW or heartbeat < 0.001:
        raise ValueError(
            f"heartbeat * liveness must be between 1 ms and {MAX_LIVENESS_WINDOW / 86400:.1f} days "
            f"(ZeroMQ counts it in milliseconds), got {heartbeat} s * {liveness}"
        )
    return heartbeat, liveness


# Expiries handled per timer call: 200,000 calls that time out together must not hold the I/O
# thread for seconds (its heartbeat would starve); the rest follow after the loop's next turn.
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
        deadline = time.monotonic() + timeout
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

    def pop(self, msg_id: int) -> tuple[ReplyFuture[Any], str | None] | None:
        entry = self._items.pop(msg_id, None)
        if len(self._heap) > 2 * len(self._items) + 64:  # answered calls: keep the heap in proportion
            self._compact()
        return None if entry is None else (entry[0], entry[3])

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
