"""What reaches a window's callbacks: calls, one-way messages and broadcasts, each bounded.

A call runs on the thread that read it, which hands the loop to another
thread if the callback takes long (``_handoff``), or on the pool when too
many threads are held so; one-way messages of one channel, and all
broadcasts, run in order in a *lane* on the pool. Each kind has its backlog, at most
``max_queued``: past it a call is answered ``QueueFull``, one-way messages
are held back by the main (the window returns their credit with CREDIT as
it handles them), and broadcasts stay unread in ZeroMQ's queue (the
``Subscriber`` pauses). What the loop delivers in one batch goes to the pool
as one job per lane.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Sequence

from . import protocol
from ._callbacks import Listeners
from ._calls import ServedCall, deadline_of
from ._streams import Credit, is_stream_handler, open_stream, produce, send_patiently, streamed_answer
from ._dispatch import Dispatcher, call_handler
from ._loop import IOLoop
from ._ratelimit import RateLimitedLog
from .errors import NoHandler, QueueFull
from .events import Event
from .protocol import Kind, Message
from .serializers import Serializer
from .session import MAIN_NAME, WindowSession

if TYPE_CHECKING:
    from ._link import Link

log = logging.getLogger("zprokit.window")

__all__ = ["Inbox"]


class Inbox:
    """Delivers to a window's listeners; see the module docstring. ``lock`` guards the backlogs
    and the counters that pool threads change."""

    def __init__(
        self,
        name: str,
        dispatch: Dispatcher,
        loop: IOLoop,
        serializer: Serializer,
        session: WindowSession,
        *,
        max_queued: int,
        stats: Counter[str],
        from_main: Listeners,
        from_render: Listeners,
        broadcasts: Listeners,
    ) -> None:
        self._name = name
        self._dispatch = dispatch
        self._loop = loop
        self._serializer = serializer
        self._session = session
        self._max_queued = max_queued
        self._stats = stats
        self._from_main = from_main
        self._from_render = from_render
        self._broadcasts = broadcasts
        self._warn = RateLimitedLog(log)
        self.link: Link | None = None  # set once the link exists: answers and credit leave through it
        self.lock = threading.Lock()
        # Calls being served (waiting in the pool, or running), by (the asking main's session, its
        # msg_id), so a caller that gives up (CANCEL) reaches them (the loop adds, their end pops).
        self.serving: dict[tuple[bytes, int], ServedCall] = {}
        self.oneway_backlog = 0  # one-way messages queued for callbacks, not yet handled
        self.broadcast_backlog = 0  # broadcasts queued for callbacks, not yet handled
        self._request_backlog = 0  # calls handed to the pool and not yet taken (cancelled ones too)
        self._credit_due = 0  # handled one-way messages not yet reported to the main (CREDIT)
        self._batching = False
        self._due: dict[Any, list[Callable[[], None]]] = {}  # by lane, until the batch ends

    # --- from the I/O thread (or a caller reading for it) -----------------------------

    def incoming(self, msg: Message) -> None:
        """A REQUEST or one-way MESSAGE from the main (no source) or another window (via the main)."""
        sender = msg.source or MAIN_NAME
        callbacks = (self._from_render if msg.source else self._from_main).get(msg.channel)
        event = Event(sender=sender, channel=msg.channel, kind="request" if msg.kind == Kind.REQUEST else "message",
                      receiver=self._name, from_main=not msg.source)
        if msg.kind == Kind.REQUEST:
            self._call(callbacks, event, msg)
            return
        if msg.kind == Kind.STREAM:
            self._stream(callbacks, dataclasses.replace(event, kind="stream"), msg)
            return
        if not callbacks:
            self._stats["unhandled"] += 1
            self._warn.warning("unhandled", "window %r: no callback for a message from %s on channel %r",
                               self._name, sender, msg.channel)
            # Counted where the sender's side can see it too: the main's stats()["unhandled"].
            self._send(Kind.UNHANDLED, 0, msg.source, msg.channel, ())
            self._handled_one_way(queued=False)
            return
        with self.lock:
            self.oneway_backlog += 1
        self._queue(callbacks, event, msg.payload, ("message", msg.channel), self._handled_one_way)

    def _call(self, callbacks: Sequence[Callable[..., Any]], event: Event, msg: Message) -> None:
        error: Exception | None = None
        if not callbacks:
            error = NoHandler(msg.channel, self._name)
        elif is_stream_handler(callbacks[0]):  # its answer is a stream: the caller is told which call to use
            error = TypeError(f"the callback of channel {msg.channel!r} of window {self._name!r} streams: call "
                              f"{'render_stream_from_render' if msg.source else 'main_stream_from_render'}")
        elif self._request_backlog >= self._max_queued:  # bounded (cancelled ones too, until taken): told
            self._stats["refused_busy"] += 1
            error = QueueFull(self._name, f"window {self._name!r} has {self._request_backlog} calls waiting for "
                                          "its callbacks (its max_queued): try again later")
        if error is not None:
            self._send(Kind.ERROR, msg.msg_id, "", "", [protocol.encode_body(protocol.error_body(error, self._name))])
            return
        call = self.serving[(msg.session, msg.msg_id)] = ServedCall()
        event = dataclasses.replace(event, cancelled=call.token, deadline=deadline_of(msg.timeout_ms, time.time()))
        if self._loop.may_run_here(callbacks[0]) and self._dispatch.try_hold():
            # On this thread, which the loop passes to another if the callback takes long.
            try:
                self._answer(call, callbacks[0], event, msg, self._loop.run_here)
            finally:
                self._dispatch.release()
            return
        with self.lock:
            self._request_backlog += 1
        self._dispatch.submit(functools.partial(self._answer_queued, call, callbacks[0], event, msg))

    def _stream(self, callbacks: Sequence[Callable[..., Any]], event: Event, msg: Message) -> None:
        """A STREAM: its callback's generator produces on the pool as the caller's credit allows."""
        error: Exception | None = None
        if not callbacks:
            error = NoHandler(msg.channel, self._name)
        elif not is_stream_handler(callbacks[0]):  # refused before it runs, naming the call to use
            error = TypeError(f"the callback of channel {msg.channel!r} of window {self._name!r} does not stream: "
                              f"call {'render_call_render' if msg.source else 'main_call_render'}")
        elif self._request_backlog >= self._max_queued:
            self._stats["refused_busy"] += 1
            error = QueueFull(self._name, f"window {self._name!r} has {self._request_backlog} calls waiting")
        if error is not None:
            self._send(Kind.ERROR, msg.msg_id, "", "", [protocol.encode_body(protocol.error_body(error, self._name))])
            return
        call = self.serving[(msg.session, msg.msg_id)] = ServedCall()
        gate = Credit(msg.count)  # made here, on the I/O thread, so no MORE can come before it
        call.more, call.stop = gate.more, gate.wake
        event = dataclasses.replace(event, cancelled=call.token, deadline=deadline_of(msg.timeout_ms, time.time()))
        with self.lock:
            self._request_backlog += 1
        self._dispatch.submit(functools.partial(self._produce, call, gate, callbacks[0], event, msg))

    def _produce(self, call: ServedCall, gate: Credit, cb: Callable[..., Any], event: Event, msg: Message) -> None:
        key, msg_id, session = (msg.session, msg.msg_id), msg.msg_id, self._session
        asked_by, asked_as = msg.session, session.session  # the main that asked, and us then
        with self.lock:
            self._request_backlog -= 1
        if call.cancelled:
            self.serving.pop(key, None)
            return
        call.started = True
        link = self.link
        assert link is not None

        def current() -> bool:  # the same main and the same us: the consumer is still there
            return session.main_session == asked_by and session.session == asked_as

        def item(obj: Any) -> bool:
            payload = self._serializer.dumps(obj)
            link.check_size(payload, "", "")
            return current() and send_patiently(
                lambda: link.send(Kind.ITEM, msg_id, "", "", payload, raise_full=True), call)

        def end(error: BaseException | None) -> None:
            if call.cancelled or not current():
                return
            body = [] if error is None else protocol.handler_error(error, self._name)
            link.send(Kind.END, msg_id, "", "", body)

        def done() -> None:
            self.serving.pop(key, None)

        one_shot = "render_call_render" if msg.source else "main_call_render"
        stream = open_stream(cb, event, self._serializer, msg, one_shot)
        if isinstance(stream, BaseException):
            end(stream)
            done()
            return
        produce(self._dispatch, call, stream, gate, item, end, done)

    def more(self, msg: Message) -> None:
        """The consumer of our stream ``msg_id`` took ``count`` more items."""
        call = self.serving.get((msg.session, msg.msg_id))
        if call is not None and call.more is not None:
            call.more(msg.count)

    def calls(self) -> tuple[int, int]:
        """``(queued, running)``: calls to be run, and calls whose callback runs."""
        started = [call.started for call in list(self.serving.values())]  # a copy, in one step
        return started.count(False), started.count(True)

    def cancel(self, msg: Message) -> None:
        """The caller of our call ``msg_id`` gave up: not started, it never starts; running, its
        callback is told. A call already answered is not here: nothing happens."""
        call = self.serving.get((msg.session, msg.msg_id))
        if call is not None and call.cancel():
            self.serving.pop((msg.session, msg.msg_id), None)

    def drop_calls(self) -> None:
        """The main is gone: nobody to answer, so every call is stopped (each leaves as it ends)."""
        # list(...) copies in one step: pool threads pop from the table meanwhile
        for key, call in list(self.serving.items()):
            if call.cancel():
                self.serving.pop(key, None)

    def broadcast(self, topic: str, payload: Any) -> bool:
        """A broadcast on ``topic``; False once ``max_queued`` wait (stop reading the SUB)."""
        callbacks = [cb for prefix, cbs in self._broadcasts.items() if topic.startswith(prefix) for cb in cbs]
        if not callbacks:
            self._stats["unhandled"] += 1
            return True
        event = Event(sender=MAIN_NAME, channel=topic, kind="broadcast", topic=topic, receiver=self._name,
                      from_main=True)
        with self.lock:
            self.broadcast_backlog += 1
            more = self.broadcast_backlog < self._max_queued
        self._queue(callbacks, event, payload, "broadcast", self._handled_broadcast)
        return more

    def begin_batch(self) -> None:
        self._batching = True

    def end_batch(self) -> None:
        """The end of a batch on the loop: one pool job per lane, for all it delivers, in order.

        One job for many messages spares the pool a wake-up (and the GIL a handoff) per message.
        """
        self._batching = False
        due, self._due = self._due, {}
        for lane, fns in due.items():
            self._dispatch.submit(fns[0] if len(fns) == 1 else functools.partial(_run_all, fns), lane=lane)

    # --- on the pool --------------------------------------------------------------------

    def _queue(self, callbacks: Sequence[Callable[..., Any]], event: Event, payload: Any, lane: Any,
               handled: Callable[[], None]) -> None:
        """Deliver a one-way message or broadcast to ``callbacks`` in ``lane``; ``handled()`` after."""

        def deliver() -> None:
            try:
                args = self._serializer.loads(payload)
                for cb in callbacks:
                    self._notify(cb, event, args)
            finally:
                handled()

        if self._batching:
            self._due.setdefault(lane, []).append(deliver)
        else:
            self._dispatch.submit(deliver, lane=lane)

    def _handled_one_way(self, queued: bool = True) -> None:
        """One more one-way message handled: give the main its credit back, in batches while
        busy, at once when nothing is left queued (so the main never waits on a remainder)."""
        with self.lock:
            if queued:
                self.oneway_backlog -= 1
            self._credit_due += 1
            if self._credit_due < max(1, self._max_queued // 8) and self.oneway_backlog > 0:
                return
            credit, self._credit_due = self._credit_due, 0
        self._send(Kind.CREDIT, credit, "", "", ())

    def _handled_broadcast(self) -> None:
        with self.lock:
            self.broadcast_backlog -= 1
            resume = self.broadcast_backlog <= self._max_queued // 2
        if resume and self.link is not None:
            self.link.resume_broadcasts()

    def _answer_queued(self, call: ServedCall, cb: Callable[..., Any], event: Event, msg: Message) -> None:
        """``_answer`` on the pool, unless the caller gave up while the call waited (CANCEL)."""
        with self.lock:
            self._request_backlog -= 1
            if call.cancelled:
                self.serving.pop((msg.session, msg.msg_id), None)
                self._stats["cancelled_before_start"] += 1
                return
        self._answer(call, cb, event, msg)

    def _notify(self, cb: Callable[..., Any], event: Event, args: Any) -> None:
        """Call a one-way or broadcast callback; an ``async def`` one is awaited, as for calls."""

        def done(result: Any, exc: BaseException | None) -> None:
            if exc is not None:  # no caller to tell: logged and counted, and the lane goes on
                with self.lock:
                    self._stats["callback_errors"] += 1
                log.error("window %r: %s callback %r raised", self._name, event.kind, cb, exc_info=exc)

        call_handler(self._dispatch, cb, (event, args), done)

    def _answer(self, call: ServedCall, cb: Callable[..., Any], event: Event, msg: Message,
                run: Callable[..., Any] | None = None) -> None:
        msg_id, key = msg.msg_id, (msg.session, msg.msg_id)
        session = self._session
        asked_by, asked_as = msg.session, session.session  # the main that asked, and us then
        call.started = True

        def done(result: Any, exc: BaseException | None) -> None:
            self.serving.pop(key, None)
            if call.cancelled or session.main_session != asked_by or session.session != asked_as:
                # Another main (a restart) or another incarnation of us numbers its calls afresh:
                # it must never get this answer.
                with self.lock:
                    self._stats["late_answers"] += 1
                return
            if exc is None:
                exc = streamed_answer(result, "render_stream_from_render" if msg.source else "main_stream_from_render")
            if exc is None:
                try:
                    kind, payload = Kind.REPLY, self._serializer.dumps(result)
                    assert self.link is not None
                    self.link.check_size(payload, "", "")
                except BaseException as e:  # an unpicklable or oversized return value is the callback's error
                    exc = e  # (SystemExit from a __reduce__ included: this may run on the I/O thread)
            if exc is not None:
                kind, payload = Kind.ERROR, protocol.handler_error(exc, self._name)
            self._send(kind, msg_id, "", "", payload)

        try:
            args = self._serializer.loads(msg.payload)
        except BaseException as e:  # SystemExit from a __reduce__ too: this may run on the I/O thread
            done(None, e)
            return
        stop = call_handler(self._dispatch, cb, (event, args), done, run)
        if stop is not None:  # an async callback, running on: a CANCEL cancels its task
            call.stop = stop
            if call.cancelled:  # the CANCEL came while it started
                stop()

    def _send(self, kind: Kind, msg_id: int, target: str, channel: str, payload: Any) -> None:
        if self.link is not None:
            self.link.send(kind, msg_id, target, channel, payload)


def _run_all(fns: list[Callable[[], None]]) -> None:
    for fn in fns:
        try:
            fn()
        except BaseException:  # each delivery reports its callbacks' errors; this is a bug net
            log.exception("error in a delivery")
