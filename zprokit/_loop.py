"""A node's I/O thread: it polls the sockets, runs calls handed to it, and fires timers.

The loop thread receives, with two exceptions below. Other threads hand
work over with ``call_soon`` (a deque plus an eventfd wake-up, polled
beside the sockets) and get answers back through futures. Each wake-up
drains every ready message of every socket and every queued call, so work
is handed over in batches, and a socket's ``on_batch_end`` runs after each
of its batches (to send in a run what the batch produced). Timers (request
deadlines, heartbeats) live in a heap here too.

The exceptions are for speed, as a thread handoff under the GIL costs tens
of microseconds: the sockets that carry requests and replies are
``SharedSocket``s, on which any thread may send under a lock, and which a
caller waiting for an answer may read itself while the loop stops watching
(its read token, ``rx``); see that class for how that stays correct.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import os
import select
import threading
import time
import weakref
from typing import Any, Callable, cast

import zmq

from ._handoff import Leadership, about_to_block
from .errors import Closed

log = logging.getLogger(__name__)

__all__ = ["IOLoop", "SharedSocket", "recv_message"]

# Plain ints: pyzmq's flag enums cost an enum construction per use, on every message.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_POLLIN = int(zmq.POLLIN)
_poll = zmq.zmq_poll  # zmq_poll(socket, 0) asks ZMQ_EVENTS for less than pyzmq's getsockopt costs
MAX_WAIT = 3600.0  # seconds: the longest single poll; longer waits are made of several


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


def recv_message(socket: zmq.Socket[Any], copied: int = 0) -> list[Any]:
    """One message, without waiting (raises ``zmq.Again``): the first ``copied`` frames as
    bytes, the rest as ``zmq.Frame`` (uncopied, with their metadata).

    ``Frame.more``, not ``recv_multipart``: that asks ``ZMQ_RCVMORE`` through pyzmq's
    getsockopt, which builds an enum per call, and costs more than the receive.
    """
    recv = socket.recv
    frame = recv(_NOBLOCK, copy=False)
    parts = [frame.bytes if copied else frame]
    while frame.more:
        frame = recv(_NOBLOCK, copy=False)
        parts.append(frame.bytes if len(parts) < copied else frame)
    return parts


class SharedSocket:
    """A socket that any thread may send on, under a lock, and one thread at a time reads.

    ZeroMQ sockets are not thread-safe: ``lock`` serializes every use, and is
    the full memory barrier ZeroMQ asks for when a socket changes threads.

    Reading is the loop's job, except while a caller waits for an answer:
    then the caller reads (``rx`` says who does), so the answer reaches the
    thread that waits for it without a hop through the loop (a thread handoff
    under the GIL costs tens of microseconds). The reader holds ``rx`` from
    its drain until it has handled the batch, so messages are handled in the
    order they came, whoever reads.

    Waiting never touches the socket: readers poll its ``ZMQ_FD``, a plain
    descriptor. That descriptor is edge-triggered, and any operation on the
    socket (a send included) may consume the edge; so after every send we
    look at ``ZMQ_EVENTS`` and, if input waits, wake the loop and a caller
    that reads (``reader_waker``); a caller that stops reading does the same
    check, and the loop drains every shared socket on every wake-up.
    """

    BATCH = 256  # messages per drain, so senders are never locked out for long

    def __init__(self, socket: zmq.Socket[Any], loop: "IOLoop", copied: int = 1) -> None:
        self.socket = socket
        self.lock = threading.Lock()
        self.rx = threading.Lock()
        self.closed = False
        self.fd: int = cast(int, socket.getsockopt(zmq.FD))
        self._loop = loop
        # How many leading frames of a message arrive as bytes (copied; cheaper for small
        # frames); the rest arrive as zmq.Frame, uncopied, with their metadata (User-Id ...).
        self._copied = copied
        # Wakes a caller that reads: a send by another thread consumed its edge, or the socket
        # closed (the loop fails pending futures, then closes). A request's own timeout needs
        # no wake: the reader waits no longer than the request's deadline. Closed when this
        # object goes (a caller polling it holds a reference), never while a poll may use it.
        self.reader_waker = _Waker()
        weakref.finalize(self, self.reader_waker.close)
        self._reader_poll = select.poll()
        self._reader_poll.register(self.fd, select.POLLIN)
        self._reader_poll.register(self.reader_waker.fd, select.POLLIN)

    def send_locked(self, frames: list[Any], check: bool = True) -> None:
        """Send now, from any thread holding ``lock`` (so it numbers and sends in one step).

        Raises ``Closed`` once the socket is closed, and ``zmq.ZMQError`` (``EAGAIN``,
        ``EHOSTUNREACH`` ...) for the owner to map. ``check=False``
        skips the look at ``ZMQ_EVENTS``: for a run of sends, the caller calls
        ``check_input_locked()`` after the last.
        """
        if self.closed:
            raise Closed("the socket is closed")
        socket = self.socket
        try:
            last = len(frames) - 1
            for i, frame in enumerate(frames):
                # Copied below pyzmq's copy threshold, sent in place above it.
                socket.send(frame, _NOBLOCK | _SNDMORE if i < last else _NOBLOCK, copy=False)
        finally:
            if check:
                self.check_input_locked()

    def check_input_locked(self) -> None:
        """After sends: if input waits (its signal maybe spent by them), wake whoever reads."""
        if self.input_waiting_locked():
            self._loop.wake()
            if self.rx.locked():
                self.reader_waker.wake()

    def drain(self) -> list[list[Any]]:
        """Up to ``BATCH`` waiting messages, for the holder of ``rx``.

        Asks whether input waits before each of the first few messages, then
        reads until ``EAGAIN``: both tell ZeroMQ we are waiting, so the next
        message signals the descriptor again. Asking costs a few system calls,
        the exception of ``EAGAIN`` about three times as much, once.
        """
        batch: list[list[Any]] = []
        with self.lock:
            if self.closed:
                return batch
            waiting, recv = self.input_waiting_locked, self.recv_locked
            try:
                while len(batch) < self.BATCH:
                    if len(batch) < 4 and not waiting():
                        break
                    batch.append(recv())
            except zmq.Again:
                pass
        return batch

    def recv_locked(self) -> list[Any]:
        """One message, from a thread holding ``lock`` and ``rx``; raises ``zmq.Again``."""
        return recv_message(self.socket, self._copied)

    def input_waiting_locked(self) -> bool:
        """``ZMQ_EVENTS`` says input waits (asked through zmq_poll: cheaper than pyzmq's getsockopt)."""
        return bool(_poll([(self.socket, _POLLIN)], 0))

    def input_waiting(self) -> bool:
        with self.lock:
            return not self.closed and self.input_waiting_locked()

    def wait_readable(self, timeout: float) -> None:
        """Block (without the GIL) until input may wait, the reader waker fires, or ``timeout`` s pass.

        For the holder of ``rx`` only (so the one poll object is never used by two threads).
        """
        for fd, _ in self._reader_poll.poll(math.ceil(min(timeout, MAX_WAIT) * 1000)):
            if fd == self.reader_waker.fd:
                self.reader_waker.drain()

    def wait_ready(self, timeout: float) -> None:
        """Block (without the GIL or the lock) until the socket's state may have changed, or
        ``timeout`` s pass: for a sender waiting for room. Its descriptor is edge-triggered and
        shared with the loop, so a caller waits briefly and looks again."""
        if not self.closed:
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            poller.poll(math.ceil(min(timeout, MAX_WAIT) * 1000))

    def close(self, linger_ms: int) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                self.socket.close(linger_ms)
        self.reader_waker.wake()  # a caller reading it stops


class _Batch:
    """Messages drained from a shared socket (whose ``rx`` is held), handled up to ``next``."""

    __slots__ = ("shared", "batch", "on_message", "on_batch_end", "next")

    def __init__(self, shared: SharedSocket, batch: list[list[Any]], on_message: Callable[[list[Any]], None],
                 on_batch_end: Callable[[], None] | None) -> None:
        self.shared, self.batch, self.on_message, self.on_batch_end = shared, batch, on_message, on_batch_end
        self.next = 0


class IOLoop:
    """A thread that polls sockets, runs queued calls and fires timers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._poller = select.epoll()  # plain descriptors only: one system call, no pyzmq layer
        self._reg_lock = threading.Lock()  # registrations of shared sockets, which readers pause
        # sockets only the loop touches, by ZMQ_FD: polling plain descriptors is one system
        # call, where zmq_poll on socket items makes several per socket
        self._handlers: dict[int, tuple[zmq.Socket[Any], Callable[[], None]]] = {}
        self._recheck: set[int] = set()
        self._shared: dict[SharedSocket, tuple[Callable[[list[Any]], None], Callable[[], None] | None]] = {}
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timers_lock = threading.Lock()
        self._timer_ids = itertools.count()
        self._wait_until = 0.0  # when the loop's current poll times out at the latest
        self._waker = _Waker()
        self._poller.register(self._waker.fd, select.EPOLLIN)
        self._woken = False
        self._more = False  # a shared socket had a full batch: poll without waiting
        self._stopping = False
        # The thread that runs the loop now: the first one, or one that took over from it while
        # a handler it ran took long (see _handoff). _work is the batch being handled, which a
        # thread that takes over finishes.
        self.leadership = Leadership(name, self._run)
        self._work: _Batch | None = None
        self._started = False
        self._ended = threading.Event()
        self._on_stop: Callable[[], None] | None = None
        self._on_fail: Callable[[BaseException], None] | None = None

    # --- for the owner, before start ------------------------------------------------

    def add_socket(self, socket: zmq.Socket[Any], on_readable: Callable[[], None]) -> None:
        """Watch ``socket`` (the loop's alone); ``on_readable`` runs on the loop while it has input."""
        fd = cast(int, socket.getsockopt(zmq.FD))
        if fd not in self._handlers:  # watched already (a resume after a renewal): just look again
            self._poller.register(fd, select.EPOLLIN)
        self._handlers[fd] = (socket, on_readable)
        self._recheck.add(fd)  # input may be waiting already: the descriptor only signals changes
        self._more = True

    def remove_socket(self, socket: zmq.Socket[Any]) -> None:
        for fd, (sock, _) in list(self._handlers.items()):
            if sock is socket:
                del self._handlers[fd]
                self._unregister(fd)
                self._recheck.discard(fd)

    def add_shared(
        self,
        shared: SharedSocket,
        on_message: Callable[[list[Any]], None],
        on_batch_end: Callable[[], None] | None = None,
    ) -> None:
        """Watch ``shared``; ``on_message(frames)`` runs on the loop for each message it
        receives, and ``on_batch_end()`` after each batch of them."""
        with self._reg_lock:
            self._shared[shared] = (on_message, on_batch_end)
            self._poller.register(shared.fd, select.EPOLLIN)

    def remove_shared(self, shared: SharedSocket) -> None:
        with self._reg_lock:
            if self._shared.pop(shared, None) is not None:
                self._unregister(shared.fd)

    def _unregister(self, fd: int) -> None:
        try:
            self._poller.unregister(fd)
        except (OSError, ValueError):  # closed already: epoll forgot it with its last reference
            pass

    def pause(self, shared: SharedSocket) -> None:
        """Stop watching ``shared`` (a caller reads it now). From any thread."""
        self._watch(shared, 0)

    def resume(self, shared: SharedSocket) -> None:
        """Watch ``shared`` again. From any thread."""
        self._watch(shared, select.EPOLLIN)

    def _watch(self, shared: SharedSocket, events: int) -> None:
        with self._reg_lock:
            if shared in self._shared:
                try:
                    self._poller.modify(shared.fd, events)
                except (OSError, ValueError):  # the loop has ended: nothing to watch for
                    pass

    def start(
        self, on_stop: Callable[[], None] | None = None, on_fail: Callable[[BaseException], None] | None = None
    ) -> None:
        """Start the thread; ``on_stop`` runs on it last, to close the sockets. If the thread fails
        (anything escapes the loop), ``on_fail(exc)`` runs on it first, to close the node."""
        self._on_stop = on_stop
        self._on_fail = on_fail
        self._started = True
        self.leadership.start()

    # --- from any thread --------------------------------------------------------------

    @property
    def in_loop(self) -> bool:
        """The calling thread runs the loop (and is not in a handler it runs: see ``_handoff``)."""
        return self.leadership.in_loop

    @property
    def ended(self) -> bool:
        """The loop has run its last turn and closed its sockets."""
        return self._ended.is_set()

    @property
    def alive(self) -> bool:
        return self._started and not self._ended.is_set() and not self._stopping

    def may_run_here(self, handler: Any) -> bool:
        """``handler`` may run on the calling thread (``run_here``): it leads, handling a batch of
        messages (where a takeover can go on from the next one), and the handler has not
        taken long lately."""
        return self._work is not None and self.leadership.in_loop and self.leadership.quick(handler)

    def expand(self, items: list[Any]) -> bool:
        """Handle ``items`` next, before the rest of the batch in hand, each through its socket's
        ``on_message`` as if it had been read: the messages of a BATCH, so a handler among them
        that takes long hands the loop over as from any message, and the thread that takes it
        over goes on from the next one. False outside the loop's batches (nothing is taken)."""
        work = self._work
        if work is None or not self.leadership.in_loop:
            return False
        work.batch[work.next:work.next] = items
        return True

    def run_here(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run handler ``fn(*args)`` here, on the loop's thread; if it takes long, another thread
        takes the loop over meanwhile (see ``_handoff``)."""
        return self.leadership.run_here(fn, *args)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread, in order with other calls."""
        self._calls.append(fn)
        self.wake()

    def wake(self) -> None:
        """Make the loop look at its sockets and queue now."""
        if not self._woken:
            self._woken = True
            self._waker.wake()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread after ``delay`` seconds. From any thread."""
        when = time.monotonic() + delay
        with self._timers_lock:
            heapq.heappush(self._timers, (when, next(self._timer_ids), fn))
        if when < self._wait_until and not self.in_loop:
            self.wake()  # the loop sleeps past it: let it recompute

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the loop to finish and wait up to ``timeout`` s; True once its thread has ended."""
        def _stop() -> None:
            self._stopping = True

        about_to_block()  # a handler that closes its own node: the loop goes on elsewhere

        if not self._started:  # never started: the owner closes its sockets
            self._started = True
            self._ended.set()
            if self._on_stop is not None:
                self._on_stop()
            self._waker.close()
            self._poller.close()
        elif not self._ended.is_set():
            self.call_soon(_stop)
            if not self.in_loop:
                if not self._ended.wait(timeout):
                    log.warning("%s: I/O thread did not stop within %.1f s", self.name, timeout)
                    return False
        return self._ended.is_set()

    # --- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        """The loop, on whichever thread leads: the first, or one that took over (which first
        finishes the batch the last leader was in). Returns when this thread loses the lead."""
        me = threading.current_thread()
        try:
            if self._work is not None:  # we took over: what the last leader left, in order
                self._recheck.update(self._handlers)  # it may have consumed their signals
                self._more = True
                if not self._finish_batch(me):
                    return
            while not self._stopping:
                if not self._run_once(me):
                    return  # a handler we ran took long: another thread leads now
        except BaseException as e:  # a bug in zprokit (user code never runs bare here): no half-alive node
            if not self.leadership.is_leader(me):  # no longer the loop's thread: the node lives on elsewhere
                log.error("%s: error in a handler's thread after it handed the loop over", self.name, exc_info=e)
                return
            self._stopping = True
            log.critical("%s: the I/O thread failed; its node is closed", self.name, exc_info=e)
            if self._on_fail is not None:
                try:
                    self._on_fail(e)
                except BaseException:
                    log.exception("%s: error while failing the node", self.name)
        self._stopping = True
        self.leadership.stop()
        try:
            if self._on_stop is not None:
                self._on_stop()
        except Exception:
            log.exception("%s: error while closing sockets", self.name)
        finally:
            self._waker.close()
            self._poller.close()
            self._ended.set()

    def _run_once(self, me: threading.Thread) -> bool:
        """One turn: calls, sockets, timers. False if this thread lost the lead meanwhile."""
        timeout = -1.0
        self._wait_until = math.inf
        if self._calls or self._more:
            timeout = 0.0
        elif self._timers:
            self._wait_until = self._timers[0][0]
            # epoll rounds up to whole ms, and takes at most an int of them: a far timer is waited for in steps
            timeout = min(MAX_WAIT, max(0.0, self._wait_until - time.monotonic()))
        self.leadership.rested()
        ready = {fd for fd, _ in self._poller.poll(timeout)}
        self._wait_until = 0.0
        woken = self._waker.fd in ready
        if woken:
            # Drain first, then clear: cleared first, a wake() in between would write to the
            # eventfd, the drain would swallow it, and every later wake() would see the flag
            # still set and skip writing: a lost wake-up, for good.
            self._waker.drain()
            self._woken = False
        more = self._more
        self._more = False
        self._run_calls()
        recheck, self._recheck = self._recheck, set()
        for fd in ready | recheck:
            self._serve_socket(fd)
        for shared, (on_message, on_batch_end) in list(self._shared.items()):
            if not (woken or more or shared.fd in ready):
                continue  # nothing new: its descriptor would have fired, or a sender woken us
            if not shared.rx.acquire(blocking=False):
                continue  # a caller reads it; it looks for input left over when it stops
            try:
                self._run_calls()  # what the last reader handed over comes before what follows it
                batch = shared.drain()
            except BaseException:
                shared.rx.release()
                raise
            self._more |= len(batch) == shared.BATCH
            self._work = _Batch(shared, batch, on_message, on_batch_end)
            if not self._finish_batch(me):
                return False
        if self._timers:
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                with self._timers_lock:
                    _, _, fn = heapq.heappop(self._timers)
                self._guarded(fn)
        return True

    def _finish_batch(self, me: threading.Thread) -> bool:
        """Handle the rest of the batch in hand, then end it and release its socket's ``rx``.
        False if this thread lost the lead in a handler: the new leader goes on from the next
        message (and this thread touches the batch no more)."""
        work = self._work
        assert work is not None
        leadership = self.leadership
        try:
            batch, on_message = work.batch, work.on_message
            while work.next < len(batch):
                frames = batch[work.next]
                work.next += 1
                try:
                    on_message(frames)
                except Exception:
                    log.exception("%s: error handling a message", self.name)
                if leadership.leader is not me:
                    return False
            self._work = None
            if work.on_batch_end is not None:
                self._guarded(work.on_batch_end)
        except BaseException:
            if leadership.leader is me:
                self._work = None
                work.shared.rx.release()
            raise
        work.shared.rx.release()
        return True

    def _run_calls(self) -> None:
        calls = self._calls
        for _ in range(len(calls)):
            self._guarded(calls.popleft())

    def _serve_socket(self, fd: int) -> None:
        """Call the handler of a loop-only socket while it has input (bounded; the rest next turn)."""
        for _ in range(SharedSocket.BATCH):
            entry = self._handlers.get(fd)
            if entry is None:
                return  # its handler removed it
            socket, handler = entry
            if socket.closed or not _poll([(socket, _POLLIN)], 0):
                return
            self._guarded(handler)
        self._recheck.add(fd)
        self._more = True

    def _guarded(self, fn: Callable[[], None]) -> None:
        # One faulty call must not take the node's sockets down with it. Anything that is not an
        # Exception (SystemExit ...) does: the loop fails and closes its node (see _run). User code
        # never gets here unguarded: call_handler turns whatever it raises into an answer.
        try:
            fn()
        except Exception:
            log.exception("%s: error in I/O loop callback %r", self.name, fn)
