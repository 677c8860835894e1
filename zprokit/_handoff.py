"""Leader/followers: a handler runs on the thread that read its request, and if it runs long,
another thread takes the I/O loop over.

Handing each request to a pool thread costs a thread switch under the GIL
(tens of microseconds on 2 cores, there and again for the answer) and most
handlers return in microseconds. So the loop's thread, the *leader*, runs a
handler itself (``run_here``). A *watcher* thread (one per process, for
all its nodes) looks at every leader every ``HANDOFF`` seconds; if it sees
the same handler running twice, the handler blocks or computes, and the
watcher becomes that loop's leader (another thread takes over watching): it finishes the
batch of messages the old leader was in (in order) and runs the loop from
there. The old leader, when its handler returns, answers as a pool thread
would and ends. A zprokit call that is about to wait (a future's
``result()`` in a handler) hands the loop over at once (``about_to_block``).

A handler that lost the lead runs on the pool for the next ``SLOW_FOR``
seconds (a burst of calls to a handler that blocks costs one takeover, not
one each), then is tried here again.

A handler run so takes one of the pool's ``workers`` slots (see
``Dispatcher.try_hold``), so at most ``workers`` handlers run at once, on
the pool or not; when none is free, handlers wait in the pool's queue.
The watcher sleeps while the node is idle, so an idle node costs no wake-ups;
the first handler of a burst wakes it.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, TypeVar

__all__ = ["HANDOFF", "Leadership", "about_to_block"]

_T = TypeVar("_T")

HANDOFF = 0.005  # seconds between the watcher's looks: a handler running past two looks loses the lead
SLOW_FOR = 1.0  # seconds a handler that lost the lead runs on the pool before it is tried here again
# Looks that saw no handler before the watcher sleeps until one starts (40 ms). Short: each look
# takes the GIL, and while a handler that lost the lead computes, a look costs the loop's thread a
# turn of the GIL (up to the switch interval, 5 ms) when it needs it most.
_IDLE_LOOKS = 8
_here = threading.local()  # .lead: the Leadership whose handler this thread runs now


class Leadership:
    """Which thread runs a loop now (``leader``), and its watcher. ``lead()`` is the loop's body: it
    runs on the first leader and on each thread that takes over, and returns when that thread is
    no longer the leader (see ``is_leader``) or the loop ends."""

    def __init__(self, name: str, lead: Callable[[], None]) -> None:
        self.name = name
        self._lead = lead
        self._lock = threading.Lock()  # guards leader and _running together
        self.leader: threading.Thread | None = None
        self._running = 0  # the number of the handler the leader runs now; 0: none
        self._count = 0  # handlers run on a leader so far (their numbers)
        self._fn: Any = None  # the handler the leader runs now
        self._busy_since = 0.0  # when the leader started running handlers, since it last waited for input
        self._slow: dict[int, float] = {}  # id(handler) -> until when it runs on the pool (it took long)
        self._watched = False  # the process's watcher looks at this loop
        self._seen = 0  # the handler the watcher saw running at its last look
        self._urgent = 0  # a handler about to wait: take over from it at once
        self._stopping = False
        self.takeovers = 0

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._lead, name=self.name, daemon=True)
        self.leader = thread
        thread.start()
        return thread

    def stop(self) -> None:
        """No more takeovers; the watcher stops looking at this loop."""
        self._stopping = True
        _WATCHER.remove(self)

    def is_leader(self, thread: threading.Thread) -> bool:
        return self.leader is thread

    @property
    def in_loop(self) -> bool:
        """The calling thread leads, outside a handler run by ``run_here`` (in one, it is like a
        pool thread: the lead may pass to another thread at any moment)."""
        return self.leader is threading.current_thread() and not self._running

    def quick(self, fn: Any) -> bool:
        """``fn`` may run on the leader: it has not lost the lead in the last ``SLOW_FOR`` s, and the
        leader has not run handlers for ``HANDOFF`` s since it last waited for input (handlers
        that each take a few ms, one after another, would hold the loop as long as a slow one)."""
        if self._busy_since and time.monotonic() - self._busy_since > HANDOFF:
            return False
        if not self._slow:
            return True
        until = self._slow.get(id(fn))
        if until is None:
            return True
        if time.monotonic() < until:
            return False
        self._slow.pop(id(fn), None)
        return True

    def run_here(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run handler ``fn(*args)`` on the leader (the calling thread). If another thread took
        the lead meanwhile, this one no longer leads when it returns."""
        self._count += 1
        self._fn = fn
        self._running = self._count
        if not self._busy_since:
            self._busy_since = time.monotonic()
        if _WATCHER.asleep:  # read after _running was written: see _Watcher.run
            _WATCHER.rouse()
        if not self._watched:
            self._watched = True
            _WATCHER.add(self)
        _here.lead = self
        try:
            return fn(*args)
        finally:
            _here.lead = None
            with self._lock:
                if self.leader is threading.current_thread():
                    self._running = 0
                    self._urgent = 0

    def rested(self) -> None:
        """The leader is about to wait for input: its time in handlers starts again."""
        self._busy_since = 0.0

    def _about_to_block(self) -> None:
        running = self._running
        if running and self.leader is threading.current_thread():
            self._urgent = running
            _WATCHER.rouse()

    def _look(self) -> tuple[bool, bool]:
        """The watcher's look: ``(busy, took_over)``. Takes the loop over (on the watcher's
        thread, which then leads it) if the handler it saw last time still runs, or waits."""
        running = self._running
        if running and (running == self._seen or running == self._urgent) and self._take_over(running):
            return True, True
        self._seen = running
        return bool(running), False

    def _take_over(self, running: int) -> bool:
        with self._lock:
            if self._running != running or self._stopping:
                return False  # that handler returned meanwhile
            old = self.leader
            self.leader = me = threading.current_thread()
            self._running = self._urgent = 0
            self._busy_since = 0.0
            self.takeovers += 1
            if len(self._slow) > 1000:  # handlers made on the fly: forget the oldest marks
                self._slow.clear()
            self._slow[id(self._fn)] = time.monotonic() + SLOW_FOR
        me.name = self.name
        if old is not None:  # it only finishes its handler now, as a pool thread would
            old.name = f"zprokit-handler-from-{self.name}"
        _WATCHER.replace(me)  # another thread watches (this loop too) from now on
        self._lead()
        return True


class _Watcher:
    """The process's watcher: one thread that looks at every leader running handlers, every
    ``HANDOFF`` s while any does, and sleeps while none has for a while (so idle nodes cost no
    wake-ups, and a process with many nodes, one thread of looks)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leaders: list[Leadership] = []
        self._thread: threading.Thread | None = None
        self.asleep = False
        self._wake = threading.Event()

    def add(self, lead: Leadership) -> None:
        with self._lock:
            if not lead._stopping and lead not in self._leaders:
                self._leaders.append(lead)
            if self._thread is None and self._leaders:
                self._start()
        if self.asleep:  # it may have looked at the leaders before this one came: see _run
            self.rouse()

    def remove(self, lead: Leadership) -> None:
        with self._lock:
            if lead in self._leaders:
                self._leaders.remove(lead)
        self.rouse()  # a watcher with nothing left to watch ends

    def rouse(self) -> None:
        self.asleep = False
        self._wake.set()

    def replace(self, thread: threading.Thread) -> None:
        """``thread``, the watcher, has taken a loop over: start another to watch."""
        with self._lock:
            if self._thread is thread:
                self._thread = None
                if self._leaders:
                    self._start()

    def forget(self) -> None:
        """In a forked child: the parent's watcher and nodes are not ours."""
        self.__init__()  # type: ignore[misc]

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="zprokit-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = threading.current_thread()
        idle = _IDLE_LOOKS  # a new watcher sleeps at once unless a handler runs (it may follow a takeover)
        wake = self._wake
        while True:
            with self._lock:
                leaders = list(self._leaders)
                if not leaders or self._thread is not me:
                    if self._thread is me:
                        self._thread = None
                    return
            if idle >= _IDLE_LOOKS:
                # Sleep until a handler starts. Dekker's order: we write asleep then read _running,
                # run_here writes _running then reads asleep; one of us sees the other's write.
                self.asleep = True
                with self._lock:  # taken after asleep is set: a leader added later rouses us (add)
                    leaders = list(self._leaders)
                if not any(lead._running for lead in leaders):
                    wake.wait()
                self.asleep = False
                idle = 0
                continue
            if wake.wait(HANDOFF):
                wake.clear()
            busy = False
            for lead in leaders:
                looked, took = lead._look()
                if took:
                    return  # this thread led that loop until it lost the lead in turn, or the loop ended
                busy = busy or looked
            idle = 0 if busy else idle + 1


_WATCHER = _Watcher()
os.register_at_fork(after_in_child=_WATCHER.forget)


def about_to_block() -> None:
    """Called by zprokit before it waits (a future's ``result()``): if this thread is a leader
    running a handler, let the watcher take the loop over now, not after ``HANDOFF``."""
    lead: Leadership | None = getattr(_here, "lead", None)
    if lead is not None:
        lead._about_to_block()
