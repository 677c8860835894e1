"""Requests to the main's own handlers: run each, answer it, and never let a burst pile up.

By default a handler runs on the thread that read its request, which hands
the loop to another thread if the handler takes long (``_handoff``); when
too many threads are held by such handlers, on the pool. With
``inline=True`` it runs on the I/O thread, always. At most ``max_queued``
calls wait for the pool; past that a call is answered at once with
``QueueFull``. A call whose caller gave up while it
waited (CANCEL) never starts. An answer goes only to the incarnation of the
window that asked.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

from . import protocol
from ._calls import ServedCall, deadline_of
from ._streams import Credit, open_stream, produce, send_patiently, streamed_answer
from ._dispatch import Dispatcher, call_handler
from ._loop import IOLoop
from .errors import MessageTooLarge, NoHandler, QueueFull
from .events import Event
from .protocol import Kind, Message
from .serializers import Serializer
from .session import MAIN_NAME, Peer

if TYPE_CHECKING:
    from ._router import Router

__all__ = ["Server", "check_size"]


class Server:
    """Serves windows' requests to the main's handlers (``handlers``: channel -> (fn, inline))."""

    def __init__(
        self,
        router: Router,
        loop: IOLoop,
        dispatch: Dispatcher,
        serializer: Serializer,
        handlers: Mapping[str, tuple[Callable[..., Any], bool, bool]],
        max_queued: int,
    ) -> None:
        self._router = router
        self._loop = loop
        self._session = router.session
        self._dispatch = dispatch
        self._serializer = serializer
        self._handlers = handlers
        self._max_queued = max_queued
        self._backlog = 0  # calls handed to the pool and not yet taken by a thread (cancelled ones too)
        self._backlog_lock = threading.Lock()
        self._replies: list[tuple[Peer, int, Any]] = []  # inline handlers' replies, until the batch ends

    def calls(self) -> tuple[int, int]:
        """``(queued, running)``: windows' calls to be run, and calls whose handler runs."""
        started = [call.started for call in list(self._session.serving.values())]  # a copy, in one step
        return started.count(False), started.count(True)

    def serve(self, peer: Peer, msg: Message) -> None:
        """Run the handler of ``msg.channel`` for window ``peer``'s request (I/O thread): here if
        it is inline, or by default while it is quick (see ``_handoff``), else on the pool, which
        answers from there. The call is kept in the
        session's ``serving`` until it ends, so a CANCEL (or the window leaving) reaches it."""
        entry = self._handlers.get(msg.channel)
        if entry is None:
            self._router.send_error(peer.name, msg.msg_id, NoHandler(msg.channel, MAIN_NAME))
            return
        handler, inline, streams = entry
        if streams:  # its answer is a stream: the caller is told at once which call to use
            self._router.send_error(peer.name, msg.msg_id, TypeError(
                f"the handler of channel {msg.channel!r} streams: call render_stream_from_main"))
            return
        call, key = ServedCall(), (peer.session, msg.msg_id)
        if inline:
            self._session.serving[key] = call  # an async inline handler runs on: it can be cancelled
            self._run(call, key, peer, handler, msg)
            return
        if self._loop.may_run_here(handler) and self._dispatch.try_hold():
            # The common case: on this thread, which the loop passes to another if it takes
            # long (see _handoff); no thread handoff there and back.
            self._session.serving[key] = call
            try:
                self._run(call, key, peer, handler, msg, self._loop.run_here)
            finally:
                self._dispatch.release()
            return
        # Bounded by what waits in the pool, cancelled calls included (they leave when a
        # thread takes them): the caller is told, nothing piles up.
        if self._backlog >= self._max_queued:
            self._router.stats["refused_busy"] += 1
            self._router.send_error(peer.name, msg.msg_id, QueueFull(
                MAIN_NAME, f"the main has {self._backlog} calls waiting for its handlers (its max_queued): "
                           "try again later"))
            return
        self._session.serving[key] = call
        with self._backlog_lock:
            self._backlog += 1
        self._dispatch.submit(functools.partial(self._run_queued, call, key, peer, handler, msg))

    def serve_stream(self, peer: Peer, msg: Message) -> None:
        """A window's STREAM: run the handler of ``msg.channel`` on the pool, where its generator
        produces as the window's credit allows (never inline: it waits for credit)."""
        entry = self._handlers.get(msg.channel)
        if entry is None:
            self._router.send_error(peer.name, msg.msg_id, NoHandler(msg.channel, MAIN_NAME))
            return
        if not entry[2]:  # a one-shot handler: refused before it runs, naming the call to use
            self._router.send_error(peer.name, msg.msg_id, TypeError(
                f"the handler of channel {msg.channel!r} does not stream: call render_msg_to_main"))
            return
        if self._backlog >= self._max_queued:
            self._router.stats["refused_busy"] += 1
            self._router.send_error(peer.name, msg.msg_id, QueueFull(
                MAIN_NAME, f"the main has {self._backlog} calls waiting for its handlers (its max_queued)"))
            return
        call, key = ServedCall(), (peer.session, msg.msg_id)
        gate = Credit(msg.count)  # made here, on the I/O thread, so no MORE can come before it
        call.more, call.stop = gate.more, gate.wake
        self._session.serving[key] = call
        with self._backlog_lock:
            self._backlog += 1
        self._dispatch.submit(functools.partial(self._run_stream, call, gate, key, peer, entry[0], msg))

    def _run_stream(self, call: ServedCall, gate: Credit, key: tuple[bytes, int], peer: Peer,
                    handler: Callable[..., Any], msg: Message) -> None:
        with self._backlog_lock:
            self._backlog -= 1
        serving, windows, name, msg_id = self._session.serving, self._session.windows, peer.name, msg.msg_id
        if call.cancelled:
            serving.pop(key, None)
            return
        call.started = True

        def item(obj: Any) -> bool:
            payload = self._serializer.dumps(obj)
            check_size(peer, payload, "")
            return windows.get(name) is peer and send_patiently(
                lambda: self._router.send_to(name, Kind.ITEM, msg_id, "", payload, raise_full=True), call)

        def end(error: BaseException | None) -> None:
            if windows.get(name) is not peer or call.cancelled:
                return  # nobody to tell
            body = [] if error is None else protocol.handler_error(error, MAIN_NAME)
            self._router.send_to(name, Kind.END, msg_id, "", body)

        stream = open_stream(handler, Event(name, msg.channel, "request", None, MAIN_NAME, False, call.token,
                                             deadline_of(msg.timeout_ms, time.time())),
                              self._serializer, msg, "render_msg_to_main")
        if isinstance(stream, BaseException):
            end(stream)
            serving.pop(key, None)
            return
        def done() -> None:
            serving.pop(key, None)

        produce(self._dispatch, call, stream, gate, item, end, done)

    def _run_queued(self, call: ServedCall, key: tuple[bytes, int], peer: Peer, handler: Callable[..., Any],
                    msg: Message) -> None:
        """On the pool: run it, unless the caller gave up while the request waited (CANCEL)."""
        with self._backlog_lock:
            self._backlog -= 1
        if call.cancelled:
            self._session.serving.pop(key, None)
            with self._router.sock.lock:  # the router's counters: the loop's and the senders'
                self._router.stats["cancelled_before_start"] += 1
            return
        self._run(call, key, peer, handler, msg)

    def _run(self, call: ServedCall, key: tuple[bytes, int], peer: Peer, handler: Callable[..., Any],
             msg: Message, run: Callable[..., Any] | None = None) -> None:
        call.started = True
        done = self._answerer(call, key, peer, msg.msg_id)
        try:
            args = self._serializer.loads(msg.payload)
        except BaseException as e:  # SystemExit from a __reduce__ too: this may run on the I/O thread
            done(None, e)
            return
        event = Event(peer.name, msg.channel, "request", None, MAIN_NAME, False, call.token,
                      deadline_of(msg.timeout_ms, time.time()))
        stop = call_handler(self._dispatch, handler, (event, args), done, run)
        if stop is not None:  # an async handler, running on: a CANCEL cancels its task
            call.stop = stop
            if call.cancelled:  # the CANCEL came while it started
                stop()

    def _answerer(self, call: ServedCall, key: tuple[bytes, int], asker: Peer,
                  msg_id: int) -> Callable[[Any, BaseException | None], None]:
        """The ``done(result, exc)`` that answers request ``msg_id`` of window ``asker``.

        Only the window that asked, and only if it still waits: one that restarted under the
        same name meanwhile numbers its calls afresh, and must never get another
        incarnation's answer; one that cancelled the call has forgotten it."""
        name = asker.name
        windows, serving = self._session.windows, self._session.serving

        def done(result: Any, exc: BaseException | None) -> None:
            serving.pop(key, None)
            if call.cancelled or windows.get(name) is not asker:
                with self._router.sock.lock:
                    self._router.stats["late_answers"] += 1  # its caller is gone: nobody to answer
                return
            if exc is None:
                exc = streamed_answer(result, "render_stream_from_main")
            if exc is None:
                try:
                    reply = self._serializer.dumps(result)
                    check_size(asker, reply, "")
                except BaseException as e:  # an unpicklable or oversized return value is the handler's error
                    exc = e  # (SystemExit from a __reduce__ included: this may run on the I/O thread)
            if exc is not None:
                self._router.send_to(name, Kind.ERROR, msg_id, "", protocol.handler_error(exc, MAIN_NAME), served=True)
            elif len(reply) == 1 and self._router.batching and self._router.in_loop():
                # An inline handler's reply, made while the loop works through a batch of
                # messages, leaves with the batch's other replies when the batch ends: a run
                # of sends wakes libzmq's I/O thread once, where one send at a time woke it
                # each time (and on 2 cores the woken thread preempts this one: about 40 µs a
                # reply, measured).
                self._replies.append((asker, msg_id, reply[0]))
            elif len(reply) == 1:
                self._router.send_replies([(asker, msg_id, reply[0])])
            else:
                self._router.send_to(name, Kind.REPLY, msg_id, "", reply, served=True)

        return done

    def flush(self) -> None:
        """The end of a batch on the loop: send the replies its inline handlers made."""
        if self._replies:
            replies, self._replies = self._replies, []
            self._router.send_replies(replies)


def check_size(peer: Peer, payload: Any, channel: str, origin: str = "") -> None:
    """Raise ``MessageTooLarge`` if ``payload`` is over what window ``peer`` announced it reads."""
    if peer.max_size is not None:
        size = protocol.wire_size(payload, origin, peer.name, channel)
        if size > peer.max_size:
            raise MessageTooLarge(size, peer.max_size, peer.name)

