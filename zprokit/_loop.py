"""The one I/O thread that owns a node's sockets.

Nothing else touches the sockets. Other threads hand work over with
``call_soon`` (a deque plus an eventfd wake-up, polled beside the sockets),
and get answers back through futures. Each wake-up drains every ready
message of every socket and every queued call, so work is handed over in
batches. Timers (request deadlines, heartbeats) live in a heap here too.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import os
import threading
import time
from typing import Any, Callable

import zmq

log = logging.getLogger(__name__)

__all__ = ["IOLoop"]


class _Waker:
    """A file descriptor the poller watches; writing to it wakes the loop."""

    def __init__(self) -> None:
        # wake() may race close(): a handler finishing after its node closed must not write
        # to the closed descriptor, whose number may already belong to another file.
        self._lock = threading.Lock()
        self._closed = False
        if hasattr(os, "eventfd"):
            self._r = self._w = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - non-Linux
            self._r, self._w = os.pipe()
            os.set_blocking(self._r, False)

    @property
    def fd(self) -> int:
        return self._r

    def wake(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._w, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except BlockingIOError:  # already full of wake-ups: it will wake
                pass

    def drain(self) -> None:
        try:
            os.read(self._r, 8 if self._r == self._w else 4096)
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self._r)
            if self._w != self._r:
                os.close(self._w)


class IOLoop:
    """A thread that polls sockets, runs queued calls and fires timers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._poller = zmq.Poller()
        self._handlers: dict[Any, Callable[[], None]] = {}
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_ids = itertools.count()
        self._waker = _Waker()
        self._poller.register(self._waker.fd, zmq.POLLIN)
        self._woken = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._on_stop: Callable[[], None] | None = None

    # --- for the owner, before start ------------------------------------------------

    def add_socket(self, socket: zmq.Socket, on_readable: Callable[[], None]) -> None:
        """Watch ``socket``; ``on_readable`` runs on the loop when it has input."""
        self._handlers[socket] = on_readable
        self._poller.register(socket, zmq.POLLIN)

    def remove_socket(self, socket: zmq.Socket) -> None:
        if self._handlers.pop(socket, None) is not None:
            self._poller.unregister(socket)

    def start(self, on_stop: Callable[[], None] | None = None) -> None:
        """Start the thread; ``on_stop`` runs on it last, to close the sockets."""
        self._on_stop = on_stop
        self._thread.start()

    # --- from any thread --------------------------------------------------------------

    @property
    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread, in order with other calls."""
        self._calls.append(fn)
        if not self._woken:
            self._woken = True
            self._waker.wake()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop after ``delay`` seconds. Loop thread only."""
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_ids), fn))

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the loop to finish and wait up to ``timeout`` s; True once its thread has ended."""
        def _stop() -> None:
            self._stopping = True

        if self._thread.is_alive():
            self.call_soon(_stop)
            if not self.in_loop:
                self._thread.join(timeout)
                if self._thread.is_alive():
                    log.warning("%s: I/O thread did not stop within %.1f s", self.name, timeout)
                    return False
        elif self._thread.ident is None:  # never started: the owner closes its sockets
            if self._on_stop is not None:
                self._on_stop()
            self._waker.close()
        return not self._thread.is_alive()

    # --- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._run_once()
        except Exception:  # a bug in zprokit; say so loudly rather than hang callers
            log.exception("%s: I/O loop crashed", self.name)
        finally:
            self._stopping = True
            try:
                if self._on_stop is not None:
                    self._on_stop()
            except Exception:
                log.exception("%s: error while closing sockets", self.name)
            finally:
                self._waker.close()

    def _run_once(self) -> None:
        timeout_ms: int | None = None
        if self._calls:
            timeout_ms = 0
        elif self._timers:
            timeout_ms = max(0, int((self._timers[0][0] - time.monotonic()) * 1000) + 1)
        events = self._poller.poll(timeout_ms)
        for sock, _ in events:
            handler = self._handlers.get(sock)
            if handler is not None:
                self._guarded(handler)
            elif sock == self._waker.fd:
                self._woken = False
                self._waker.drain()
        calls = self._calls
        for _ in range(len(calls)):
            self._guarded(calls.popleft())
        if self._timers:
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, fn = heapq.heappop(self._timers)
                self._guarded(fn)

    def _guarded(self, fn: Callable[[], None]) -> None:
        # One faulty call must not take the node's sockets down with it.
        try:
            fn()
        except Exception:
            log.exception("%s: error in I/O loop callback %r", self.name, fn)
