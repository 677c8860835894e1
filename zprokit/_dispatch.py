"""Where user code runs: a small pool of daemon threads, and an asyncio loop for ``async def``.

The pool's ``workers`` are slots: a handler the I/O thread runs itself (a
call's, by default: see ``_handoff``) takes one too (``try_hold``), so no
more than ``workers`` handlers run at once, on the pool or not; a slow
handler is not left on the I/O thread, so it cannot stall routing, replies
to others, or heartbeats for long. One-way messages can be given a *lane*: calls in the same lane run one after
another, in arrival order, while other lanes and requests run in parallel.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import concurrent.futures

log = logging.getLogger(__name__)

__all__ = ["Dispatcher"]

_STOP = object()
# What most handlers return: never awaitable, so no need to ask (inspect.isawaitable costs).
SYNC_RESULTS = frozenset({type(None), bytes, str, int, float, bool, list, tuple, dict, bytearray})


class Dispatcher:
    """Runs callables off the I/O thread; threads start lazily up to ``workers``, and run while
    fewer than ``workers`` slots are taken (by them, and by handlers run off the pool)."""

    def __init__(self, name: str, workers: int = 8) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.name = name
        self._max = workers
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads not running a job (started, or waiting for one)
        self._queued = 0  # jobs put in the queue and not yet taken by a thread
        self._lock = threading.Lock()
        # Jobs running on the pool plus handlers run off it (try_hold): never more than workers.
        self._busy = 0
        self._slot_free = threading.Condition(self._lock)
        self._holders: collections.Counter[int] = collections.Counter()  # threads holding a slot off the pool
        self._lanes: dict[Any, collections.deque[Callable[[], None]]] = {}
        self._closed = False
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._athread: threading.Thread | None = None

    def submit(self, fn: Callable[[], None], lane: Any = None) -> None:
        """Run ``fn()`` on a worker; with a ``lane``, after earlier calls in that lane."""
        if lane is not None:
            with self._lock:
                backlog = self._lanes.get(lane)
                if backlog is not None:
                    backlog.append(fn)
                    return
                self._lanes[lane] = collections.deque()
            fn = self._lane_runner(lane, fn)
        with self._lock:
            if self._closed:
                raise RuntimeError("dispatcher closed")
            self._queued += 1
            # An idle thread may be spoken for already, by a job queued before this one that it has
            # not taken yet: a new thread, unless there are as many idle threads as queued jobs.
            # (Comparing with 0 left a second job submitted at once waiting behind the first.)
            if self._queued > self._idle and len(self._threads) < self._max:
                t = threading.Thread(target=self._work, name=f"{self.name}-worker-{len(self._threads)}", daemon=True)
                self._threads.append(t)
                self._idle += 1
                t.start()
        self._queue.put(fn)

    def try_hold(self) -> bool:
        """Take one of the ``workers`` slots for a handler run off the pool (on the thread that
        read its request: see ``_handoff``), so that no more than ``workers`` handlers run at
        once either way. False when none is free. ``release`` gives it back (``close`` waits
        for that, as it does for the pool's threads)."""
        with self._lock:
            if self._busy >= self._max or self._closed:
                return False
            self._busy += 1
            self._holders[threading.get_ident()] += 1
            return True

    def release(self) -> None:
        """Give back the slot this thread took with ``try_hold``."""
        with self._lock:
            self._busy -= 1
            me = threading.get_ident()
            self._holders[me] -= 1
            if not self._holders[me]:
                del self._holders[me]
            self._slot_free.notify_all()

    def run_async(self, coro: Any, done: Callable[["concurrent.futures.Future[Any]"], None]) -> Callable[[], bool]:
        """Run coroutine ``coro`` on this dispatcher's asyncio loop; ``done(future)`` when it ends.
        Returns what cancels its task (from any thread)."""
        loop = self._async_loop()
        cfut = asyncio.run_coroutine_threadsafe(coro, loop)
        cfut.add_done_callback(done)
        return cfut.cancel

    def _async_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._aloop is None:
                loop = asyncio.new_event_loop()
                t = threading.Thread(target=loop.run_forever, name=f"{self.name}-asyncio", daemon=True)
                t.start()
                self._aloop, self._athread = loop, t
            return self._aloop

    def _lane_runner(self, lane: Any, first: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            fn = first
            while True:
                _call(fn)
                with self._lock:
                    backlog = self._lanes[lane]
                    if not backlog:
                        del self._lanes[lane]
                        return
                    fn = backlog.popleft()

        return run

    def _work(self) -> None:
        while True:
            fn = self._queue.get()
            if fn is _STOP:
                return
            with self._lock:
                self._idle -= 1
                self._queued -= 1
                while self._busy >= self._max and not self._closed:  # handlers run off the pool hold them
                    self._slot_free.wait()
                self._busy += 1
            _call(fn)
            with self._lock:
                self._idle += 1
                self._busy -= 1
                self._slot_free.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers, letting queued calls finish; wait at most ``timeout`` s in all."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
            self._slot_free.notify_all()  # queued jobs run now, slots or not: close lets them finish
        for _ in threads:
            self._queue.put(_STOP)
        deadline = _deadline(timeout)
        me = threading.current_thread()
        with self._lock:  # handlers run off the pool (not the one closing, if it is one): as for threads
            ident = me.ident
            if not self._slot_free.wait_for(lambda: not (set(self._holders) - {ident}), max(0.0, deadline())):
                log.warning("%s: a handler still runs after close (off the pool)", self.name)
        for t in threads:
            if t is me:  # closed from one of our own callbacks: it ends when it returns
                continue
            t.join(max(0.0, deadline()))
            if t.is_alive():
                log.warning("%s: a handler still runs after close (%s)", self.name, t.name)
        if self._aloop is not None and self._athread is not None:
            loop = self._aloop
            loop.call_soon_threadsafe(loop.stop)
            if self._athread is not me:
                self._athread.join(max(0.0, deadline()))
            if not self._athread.is_alive():
                loop.close()


def _call(fn: Callable[[], None]) -> None:
    try:
        fn()
    except BaseException:  # the callables we queue report their own errors; this is a bug net
        # BaseException too: a SystemExit that escaped must not end a worker or wedge a lane.
        log.exception("unhandled error in dispatched call %r", fn)


def _deadline(timeout: float) -> Callable[[], float]:
    import time

    end = time.monotonic() + timeout
    return lambda: end - time.monotonic()


def call_handler(
    dispatcher: Dispatcher,
    handler: Callable[..., Any],
    args: tuple[Any, ...],
    done: Callable[[Any, BaseException | None], None],
    run: Callable[..., Any] | None = None,
) -> Callable[[], bool] | None:
    """Call ``handler(*args)`` here (a worker or the I/O thread) and report through ``done``.

    A coroutine result (``async def`` handlers) is run on the dispatcher's
    asyncio loop and reported when it finishes; then this returns what
    cancels its task (``None`` for a handler that has finished here).

    Whatever user code raises, ``SystemExit`` and other ``BaseException``s
    included, is reported through ``done``: the caller gets an answer and the
    thread that ran it (a worker, a lane, the I/O thread) lives on. So does
    an ``async def`` handler whose task or await is cancelled.

    ``run(handler, *args)``, if given, calls the handler (``IOLoop.run_here``: on
    the loop's thread, which another takes over if it runs long); ``done`` is
    called after it returns, on the same thread.
    """
    try:
        result = handler(*args) if run is None else run(handler, *args)
    except BaseException as e:  # sys.exit() in a handler is the handler's error, not the node's end
        done(None, e)
        return None
    if type(result) not in SYNC_RESULTS and inspect.isawaitable(result):
        async def wrap() -> tuple[Any, BaseException | None]:
            # Every outcome is a value here: asyncio re-raises SystemExit and KeyboardInterrupt out
            # of its loop, which would end the loop's thread and every async handler with it.
            try:
                return await result, None
            except BaseException as e:
                return None, e

        def finished(fut: Any) -> None:
            if fut.cancelled():  # the task itself, cancelled before it could catch it
                done(None, asyncio.CancelledError("the async handler was cancelled"))
                return
            done(*fut.result())

        try:
            return dispatcher.run_async(wrap(), finished)
        except BaseException as e:  # the dispatcher is closed
            done(None, e)
        return None
    done(result, None)
    return None
