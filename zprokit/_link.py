"""A window's link to its main: the handshake, the DEALER, liveness and reconnecting.

The handshake (the main's side is ``MainSession``): a *probe* DEALER with a
random routing id sends HELLO; on WELCOME the window connects its DEALER
under the routing id ``name NUL nonce`` and its SUB (``Subscriber``), and
sends REGISTER; REGISTERED says both channels are live.

Every message from the main on the DEALER is checked once
(``protocol.unpack``, then ``WindowSession.admit``) and handed to its kind's
handler. The DEALER is read by the I/O thread, or by a caller waiting for
its answer (``read_for``), which settles answers itself and hands
everything else to the loop, in order.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import socket
import time
import weakref
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Mapping

import zmq

from . import protocol
from ._common import MAX_WAIT
from ._inbox import Inbox
from ._loop import IOLoop, SharedSocket
from ._outbox import CORK_FOR, Corked, Outbox, records
from ._ratelimit import RateLimitedLog
from ._requests import PendingRequests, ReplyFuture, fail
from ._streams import ReplyStream, live_streams
from ._subscriber import Subscriber
from .errors import AuthenticationError, Closed, MessageTooLarge, PeerLost, ProtocolError, QueueFull, Timeout
from .protocol import Kind, Message, Rejected
from .security import REJECTION_REASONS, CurveClient
from .session import MAIN_NAME, HandshakeFailed, Joining, MainRestarted, WindowSession

if TYPE_CHECKING:
    from .window import Window

log = logging.getLogger("zprokit.window")

__all__ = ["Link"]

class Link:
    """The window's sockets and what arrives on the DEALER; see the module docstring."""

    def __init__(self, window: Window, ctx: zmq.Context[Any], loop: IOLoop, signer: protocol.Signer,
                 session: WindowSession, inbox: Inbox, pending: PendingRequests, *, curve: CurveClient | None,
                 linger_ms: int, stats: Counter[str], rejected: Counter[str]) -> None:
        self._window = window
        self._ctx = ctx
        self._loop = loop
        self._signer = signer
        self.session = session
        self._inbox = inbox
        self._pending = pending
        self._curve = curve
        self._linger_ms = linger_ms
        self._stats = stats
        self._rejected = rejected
        self._name = window.name
        self._endpoint = window.endpoint
        self._serializer = window.serializer
        self._max_payload = window.max_payload
        self._probe: zmq.Socket[Any] | None = None
        self._probe_monitor: zmq.Socket[Any] | None = None
        self.dealer: SharedSocket | None = None  # any thread sends on it; one thread reads
        self._outbox = Outbox(self._name)  # calls corked to leave together (under the DEALER's lock)
        self._monitor: zmq.Socket[Any] | None = None
        self.sub = Subscriber(ctx, loop, signer, session, key=window.key, curve=curve, linger_ms=linger_ms,
                              max_payload=window.max_payload, on_broadcast=inbox.broadcast,
                              on_rejected=self.log_rejected, begin_batch=inbox.begin_batch, end_batch=inbox.end_batch)
        self._hello_ready = False  # what the last HELLO said of ready()
        # This window's streams (render_stream_from_main/_render), by msg_id; weak: a stream its
        # consumer dropped goes (and has told its producer: see ReplyStream.__del__).
        self.streams: weakref.WeakValueDictionary[int, ReplyStream[Any]] = weakref.WeakValueDictionary()
        self._warn = RateLimitedLog(log)

    # ------------------------------------------------------------------ the handshake

    def start_handshake(self) -> None:
        window = self._window
        if window.closed:
            return
        attempt = self.session.start_handshake()
        probe = self._ctx.socket(zmq.DEALER)
        probe.setsockopt(zmq.LINGER, 0)
        # 0xff never starts valid UTF-8, so a probe id can never equal a window name.
        probe.setsockopt(zmq.ROUTING_ID, b"\xff" + secrets.token_bytes(15))
        if self._curve is not None:
            self._curve.apply(probe)
            # The main's ZAP handler refusing our key is told in the CURVE handshake, not in a message.
            self._probe_monitor = probe.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
            self._loop.add_socket(self._probe_monitor, self._on_probe_refused)
        try:
            probe.connect(self._endpoint)
        except zmq.ZMQError as e:  # the form was checked at construction; libzmq may still refuse it
            probe.close(0)
            self._fail_handshake(ValueError(f"cannot connect to {self._endpoint[:60]!r}: {e}"))
            return
        self._probe = probe
        self._loop.add_socket(probe, self._on_probe)
        self._hello_ready = window._is_ready
        hello = {
            "name": self._name,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "serializer": self._serializer.name,
            "timeout": min(window.timeout, MAX_WAIT),  # JSON has no infinity
            "max_payload": self._max_payload,
            "ready": self._hello_ready,
            "max_queued": window.max_queued,
            "groups": list(window.groups),
        }
        probe.send_multipart(protocol.pack(self._signer, Kind.HELLO, 0, self.session.next_seq(), self.session.session,
                                           protocol.NO_SESSION, self._name, "", "", [protocol.encode_body(hello)]))
        limit = self.session.handshake_limit(window.timeout, first=not window._joined.is_set())
        if limit != float("inf"):  # no limit: no timer
            self._loop.call_later(limit, lambda: self._handshake_timed_out(attempt, limit))

    def _handshake_timed_out(self, attempt: int, limit: float) -> None:
        if attempt == self.session.attempt and not self.session.connected:
            where = "registering" if self.session.main_session else "waiting for the main's answer"
            self._fail_handshake(Timeout(f"no answer from the main at {self._endpoint} within {limit} s ({where})"))

    def _fail_handshake(self, error: BaseException) -> None:
        if not self._window._joined.is_set():  # the constructor is waiting: it raises this
            self._window._handshake_failed(error)
            return
        log.warning("window %r: reconnecting failed: %s", self._name, error)
        self.drop_sockets()
        self._schedule_reconnect()

    def _drop_probe(self) -> None:
        if self._probe_monitor is not None:
            assert self._probe is not None
            self._loop.remove_socket(self._probe_monitor)
            self._probe.disable_monitor()
            self._probe_monitor.close(0)
            self._probe_monitor = None
        if self._probe is not None:
            self._loop.remove_socket(self._probe)
            self._probe.close(0)
            self._probe = None

    def _on_probe_refused(self) -> None:
        self._drop_probe()
        self._fail_handshake(AuthenticationError(
            f"the main at {self._endpoint} does not admit our CURVE public key "
            f"{self._curve.public_key.decode() if self._curve else ''}: is it on its allow-list?"
        ))

    def _on_probe(self) -> None:
        assert self._probe is not None
        try:
            frames = self._probe.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        if protocol.is_denial(frames):
            self._fail_handshake(AuthenticationError(f"the main at {self._endpoint} refused our signature: wrong key?"))
            return
        try:
            msg = protocol.unpack(self._signer, frames)
        except Rejected as e:
            if e.reason == "bad_signature":
                self._fail_handshake(AuthenticationError(f"cannot verify the main at {self._endpoint}: wrong key?"))
            else:
                self._fail_handshake(ProtocolError(f"the main at {self._endpoint} answered with {e}"))
            return
        try:
            joining = self.session.answer(msg, self._endpoint)
        except HandshakeFailed as e:
            self._drop_probe()
            self._fail_handshake(e.error)
            return
        except Rejected as e:  # an answer to an earlier handshake of ours
            self.reject(e, "an answer to an earlier handshake")
            return
        self._drop_probe()
        self._join(joining)

    def _join(self, joining: Joining) -> None:
        """WELCOME: connect the DEALER under our routing id, and the SUB; then REGISTER."""
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, self._linger_ms)
        if self._curve is not None:
            self._curve.apply(dealer)
        # The nonce makes the routing id one that nobody else can claim (see zprokit.session).
        dealer.setsockopt(zmq.ROUTING_ID, joining.routing_id)
        self.sub.connect(joining.pub, joining.topics, joining.nonce if joining.pub_auth else None)
        dealer.connect(self._endpoint)
        # The main's connection closing (its process died or restarted) is known at
        # once here; heartbeats cover links that die without a word.
        self._monitor = dealer.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.dealer = SharedSocket(dealer, self._loop)
        self._loop.add_socket(self._monitor, self._on_monitor)
        self._loop.add_shared(self.dealer, self.on_dealer, self._inbox.end_batch)
        self.send(Kind.REGISTER, 0, "", "", [protocol.encode_body({"nonce": joining.nonce})], force=True)

    # ------------------------------------------------------------------ the DEALER

    def on_dealer(self, frames: Any, on_loop: bool = True) -> None:
        """A message from the main, read by the loop or (``on_loop=False``) by a waiting caller,
        which settles answers itself and hands everything else to the loop, in order (the loop
        runs what was handed over before it reads on: see ``IOLoop``). ``frames`` may also be
        a ``Message`` a BATCH carried, handled next on the loop (see ``_on_batch``)."""
        if self.dealer is None:  # dropped while this batch was read
            return
        if on_loop:
            self._inbox.begin_batch()  # until the loop's batch ends
        self._stats["messages_in"] += 1
        if type(frames) is Message:  # one a BATCH carried, admitted with it (see _on_batch)
            self._HANDLERS[frames.kind](self, frames)
            return
        try:
            if len(frames) > 1:  # the first frame comes as bytes, the rest as zmq.Frames
                frames = [frames[0], *(f.buffer for f in frames[1:])]
            msg = protocol.unpack(self._signer, frames, max_size=self._max_payload)
            self.session.admit(msg, time.monotonic())
        except MainRestarted:  # a main that does not know us answers on our current session
            self._on_loop(on_loop, self.lose_main, "the main restarted")
            return
        except Rejected as e:
            self.reject(e, "a message")
            return
        if msg.kind == Kind.BATCH:
            self._on_batch(msg, on_loop)
            return
        handler = self._HANDLERS.get(msg.kind)
        if handler is None:
            self.reject(Rejected("malformed", f"unexpected {msg.kind.name}"), "a message")
        elif on_loop or handler is _ON_ANSWER or handler is _ON_ITEM:
            handler(self, msg)
        else:
            self._loop.call_soon(functools.partial(handler, self, msg))

    def _on_batch(self, batch: Message, on_loop: bool) -> None:
        """A BATCH: its messages, in order, each as if it had come alone (admitted with it). On
        the loop they are handled next through ``on_dealer`` (see ``IOLoop.expand``)."""
        try:
            messages = protocol.unbatch(batch)
        except Rejected as e:
            self.reject(e, "a batch")
            return
        self._stats["messages_in"] += len(messages) - 1
        if on_loop and self._loop.expand(messages):
            self._stats["messages_in"] -= len(messages)  # counted again as each comes
            return
        handlers, loop = self._HANDLERS, self._loop
        for msg in messages:
            handler = handlers[msg.kind]
            if on_loop or handler is _ON_ANSWER:
                handler(self, msg)
            else:
                loop.call_soon(functools.partial(handler, self, msg))

    def _on_loop(self, on_loop: bool, fn: Callable[..., None], *args: Any) -> None:
        if on_loop:
            fn(*args)
        else:
            self._loop.call_soon(functools.partial(fn, *args))

    def reject(self, e: Rejected, what: str) -> None:
        """Drop a message from the main (the reader of the DEALER or the probe): counted and logged."""
        self._rejected[e.reason] += 1
        self.log_rejected(e, what)

    def log_rejected(self, e: Rejected, what: str) -> None:
        if e.reason in REJECTION_REASONS:
            self._warn.warning(e.reason, "window %r dropped %s: %s", self._name, what, e)
        else:
            log.debug("window %r dropped %s: %s", self._name, what, e)

    def _on_registered(self, msg: Message) -> None:
        self.session.registered(time.monotonic())
        if self._window._is_ready and not self._hello_ready:  # ready() came while this handshake was under way
            self.send(Kind.READY, 0, "", "", ())
        self._window._registered()

    def _on_answer(self, msg: Message) -> None:
        """A REPLY, ACK or ERROR: settle the request ``msg_id``, or end stream ``msg_id`` (any
        reading thread)."""
        if msg.kind == Kind.ERROR:
            body = protocol.decode_body(msg.payload)
            if body.get("rejoin") is True:
                # The main dropped us (it stopped hearing us for a while) but we still reach it.
                self._on_loop(self._loop.in_loop, self.lose_main, "the main had dropped this window")
                return
            stream = self.streams.pop(msg.msg_id, None)
            if stream is not None:
                stream.finish(protocol.error_from_body(body))
                return
        future = self._pending.pop(msg.msg_id)
        if future is None:
            self._stats["late_replies"] += 1  # its request timed out already
            return
        try:
            if msg.kind == Kind.REPLY:
                future.set_result(self._serializer.loads(msg.payload))
            elif msg.kind == Kind.ACK:
                future.set_result(None)
            else:
                future.set_exception(protocol.error_from_body(protocol.decode_body(msg.payload)))
        except Exception as e:
            fail(future, ProtocolError(f"cannot read the answer: {e!r}"))

    def _on_stream_item(self, msg: Message) -> None:
        """An ITEM or END of one of our streams (any reading thread); a late one is dropped."""
        if msg.kind == Kind.ITEM:
            stream = self.streams.get(msg.msg_id)
            if stream is not None:
                stream.deliver(msg.payload)
            return
        stream = self.streams.pop(msg.msg_id, None)
        if stream is not None:
            stream.finish(protocol.error_from_body(protocol.decode_body(msg.payload)) if msg.payload else None)

    def _on_more(self, msg: Message) -> None:
        self._inbox.more(msg)

    def _on_incoming(self, msg: Message) -> None:
        self._inbox.incoming(msg)

    def _on_cancel(self, msg: Message) -> None:
        self._inbox.cancel(msg)

    def _on_close_request(self, msg: Message) -> None:
        log.info("window %r: the main asked us to close", self._name)
        self._window._close_in_background(None)

    def _on_bye(self, msg: Message) -> None:
        # Even if the closed connection was seen first (the goodbye was handed over by a reading
        # caller, after the loop had noticed the hang-up): a goodbye is a goodbye.
        follow = self._window.exit_with_main
        self.lose_main("the main closed", retry=not follow)
        if follow:
            self._window._close_in_background(PeerLost(
                f"the main at {self._endpoint} was closed (it said goodbye); "
                "Window(exit_with_main=False) keeps a window reconnecting after that"))

    def _on_ping(self, msg: Message) -> None:
        self.send(Kind.PONG, msg.msg_id, "", "", ())

    def _on_pong(self, msg: Message) -> None:
        pass  # any verified traffic is a sign of life

    _HANDLERS: Mapping[Kind, Callable[["Link", Message], None]] = {
        Kind.REGISTERED: _on_registered,
        Kind.REPLY: _on_answer,
        Kind.ERROR: _on_answer,
        Kind.ACK: _on_answer,
        Kind.REQUEST: _on_incoming,
        Kind.MESSAGE: _on_incoming,
        Kind.STREAM: _on_incoming,
        Kind.ITEM: _on_stream_item,
        Kind.END: _on_stream_item,
        Kind.MORE: _on_more,
        Kind.CLOSE: _on_close_request,
        Kind.BYE: _on_bye,
        Kind.PING: _on_ping,
        Kind.PONG: _on_pong,
        Kind.CANCEL: _on_cancel,
    }

    def read_for(self, future: ReplyFuture[Any], timeout: float | None) -> float | None:
        """Wait for ``future`` by reading the DEALER on this (the waiting) thread.

        The answer then needs no handoff from the I/O thread, which stops
        watching the socket meanwhile. One thread reads at a time: if another
        does (the loop, or another waiting caller), return at once and the
        future is waited for as usual. Returns the time left of ``timeout``.

        Every step costs here (a request is a few dozen microseconds of
        Python), so this asks ``ZMQ_EVENTS`` rather than reading until
        ``EAGAIN`` (an exception, which costs more), and looks at the
        future's state directly.
        """
        self._window._check_fork()
        self.flush()  # what this caller (or another) corked leaves before anyone waits for it
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        dealer = self.dealer
        if dealer is None or self._loop.in_loop or not dealer.rx.acquire(blocking=False):
            return timeout
        # The request's own deadline wakes us too: the loop fails the future then.
        until = future.deadline if deadline is None else min(deadline, future.deadline)
        loop, lock = self._loop, dealer.lock
        loop.pause(dealer)
        try:
            while not future.done():
                with lock:
                    if dealer.closed:
                        break
                    parts = dealer.recv_locked() if dealer.input_waiting_locked() else None
                if parts is not None:
                    try:
                        self.on_dealer(parts, on_loop=False)
                    except Exception:  # a bug in zprokit: say so, as the loop would, and read on
                        log.exception("window %r: error handling a message", self._name)
                    continue
                left = until - time.monotonic()
                if left <= 0:
                    break
                # No input, and ZMQ_EVENTS said so: the next message signals the descriptor.
                dealer.wait_readable(left)
        finally:
            loop.resume(dealer)
            dealer.rx.release()
            if dealer.input_waiting():  # left unread, and its signal maybe spent: the loop reads it
                loop.wake()
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _on_monitor(self) -> None:
        assert self._monitor is not None
        try:
            self._monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        self._connection_closed(self.dealer)

    def _connection_closed(self, dealer: SharedSocket | None) -> None:
        """The DEALER's connection closed. What the main sent before it went (its goodbye, a last
        reply) may still wait unread: read it first, or a goodbye would look like a crash."""
        if dealer is not self.dealer:
            return  # dropped meanwhile (a goodbye, a reconnect)
        if dealer is not None:
            if not dealer.rx.acquire(blocking=False):
                # A caller reads it: what waits there reaches the loop through that caller (a
                # goodbye included), so look again in a moment instead of dropping the socket now.
                self._loop.call_later(0.05, functools.partial(self._connection_closed, dealer))
                return
            try:
                for frames in dealer.drain():
                    self.on_dealer(frames)
            finally:
                dealer.rx.release()
            self._inbox.end_batch()
        self.lose_main("its connection closed")

    # ------------------------------------------------------------------ liveness

    def tick(self) -> None:
        """Every quarter heartbeat: ping a quiet main, declare a silent one lost, watch the SUB."""
        if self._window.closed:
            return
        self._loop.call_later(self.session.heartbeat / 4, self.tick)
        now = time.monotonic()
        action = self.session.tick(now)
        if action == "lost":
            dealer = self.dealer
            if dealer is not None and dealer.input_waiting():
                return  # the main spoke and we have not read it yet (we are busy): it is not silent
            self.lose_main(f"no answer for {now - self.session.last_seen:.1f} s")
            return
        if action == "ping":
            self.send(Kind.PING, 0, "", "", ())
        if self.session.connected:
            self.sub.check(now)

    def lose_main(self, reason: str, retry: bool = True) -> None:
        """The main is gone: fail what waits on it, drop the sockets, and (maybe) reconnect."""
        if not self.session.lost(time.monotonic()):
            return
        # Without a retry this is a goodbye the window was told to follow (exit_with_main): no alarm.
        log.log(logging.WARNING if retry else logging.INFO, "window %r: lost the main at %s: %s",
                self._name, self._endpoint, reason)
        self._pending.fail_all(lambda future: PeerLost(f"{future.description}: {reason} with the request pending"))
        self.end_streams(lambda stream: PeerLost(f"{stream.description}: {reason} with the stream open"))
        self._inbox.drop_calls()
        self.drop_sockets()
        if retry and self._window.reconnect:
            self._schedule_reconnect()
        elif not self._window.exit_with_main:
            self._window._close_in_background(PeerLost(f"lost the main at {self._endpoint}: {reason}"))

    def _schedule_reconnect(self) -> None:
        if self._window.closed:
            return
        now = time.monotonic()
        delay = self.session.backoff(now)
        if delay is None:
            self._window._close_in_background(PeerLost(
                f"gave up reconnecting to {self._endpoint} after {self.session.lost_for(now):.1f} s"))
            return
        self._loop.call_later(delay, self.start_handshake)

    def end_streams(self, error: Callable[[ReplyStream[Any]], BaseException]) -> None:
        """Every stream of ours ends with ``error(stream)`` (the main is gone, or we closed)."""
        for msg_id, stream in live_streams(self.streams):
            self.streams.pop(msg_id, None)
            stream.finish(error(stream))

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread."""
        self._loop.call_soon(fn)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread in ``delay`` s."""
        self._loop.call_later(delay, fn)

    def resume_broadcasts(self) -> None:
        """The broadcast backlog drained (any thread): the SUB is read again."""
        if self.sub.paused:
            self.sub.paused = False
            self._loop.call_soon(self.sub.resume)

    # ------------------------------------------------------------------ sending (any thread)

    def check_size(self, payload: Any, target: str, channel: str) -> None:
        """Raise ``MessageTooLarge`` if ``payload`` is over what the main reads (told in WELCOME)."""
        limit = self.session.main_max
        if limit is not None:
            size = protocol.wire_size(payload, self._name, target, channel)
            if size > limit:
                raise MessageTooLarge(size, limit, MAIN_NAME)

    def send(self, kind: Kind, msg_id: int, target: str, channel: str, payload: Any, force: bool = False,
             raise_full: bool = False, timeout_ms: int = 0, count: int = 0, flags: int = 0,
             cork: bool = False) -> bool:
        """Number, sign and send to the main, from any thread; False if not connected.

        A full queue to the main (its high-water mark) is counted in
        ``dropped_hwm``; with ``raise_full`` the caller gets ``QueueFull``.
        ``cork``: a call made while others are in flight may wait in the
        outbox a moment, to leave with the next ones (see ``_outbox``).
        """
        dealer = self.dealer
        session = self.session
        if dealer is None:
            return False
        failed: list[tuple[Corked, Exception]] = []
        try:
            with dealer.lock:
                main_session = session.main_session
                if dealer.closed or not (session.connected or force) or main_session is None:
                    return False
                outbox = self._outbox
                if cork and len(payload) == 1 and outbox.add(
                        Corked(kind, msg_id, target, channel, payload[0], timeout_ms, count, flags), session.main_max):
                    self._stats["messages_out"] += 1
                    if outbox.full:  # enough to keep the callee busy while more are made
                        failed = self._flush_locked(dealer, main_session)
                    elif len(outbox.items) == 1:  # the first: sent by the loop if nobody else does first
                        self._loop.call_later(CORK_FOR, self.flush)
                    return True
                if outbox.items:  # what waits leaves first, so numbers keep their order
                    failed = self._flush_locked(dealer, main_session)
                frames = protocol.pack(self._signer, kind, msg_id, session.next_seq(), session.session,
                                       main_session, self._name, target, channel, payload, timeout_ms=timeout_ms,
                                       count=count, flags=flags)
                try:
                    dealer.send_locked(frames)
                except zmq.Again as e:
                    self._stats["dropped_hwm"] += 1
                    self._warn.warning("dropped_hwm", "window %r: the queue to the main is full; message not sent",
                                      self._name)
                    if raise_full:
                        raise QueueFull(MAIN_NAME) from e
                    return False
                except (zmq.ZMQError, Closed):  # closed under us: as if not connected
                    return False
                session.sent(time.monotonic())
                self._stats["messages_out"] += 1
                return True
        finally:
            if failed:
                self._fail_corked(failed)

    def flush(self) -> None:
        """Send the corked calls now (any thread): a caller is about to wait, or time is up."""
        dealer, session = self.dealer, self.session
        if dealer is None or not self._outbox.items:
            return
        with dealer.lock:
            main_session = session.main_session
            if dealer.closed or main_session is None or not self._outbox.items:
                return
            failed = self._flush_locked(dealer, main_session)
        if failed:
            self._fail_corked(failed)

    def _flush_locked(self, dealer: SharedSocket, main_session: bytes) -> list[tuple[Corked, Exception]]:
        """Send the outbox as one BATCH (one call alone as itself); the calls that could not
        leave, and why, for the caller to fail once it has let go of the lock."""
        items = self._outbox.take()
        session, signer = self.session, self._signer
        if len(items) == 1:
            i = items[0]
            frames = protocol.pack(signer, i.kind, i.msg_id, session.next_seq(), session.session, main_session,
                                   self._name, i.target, i.channel, (i.data,), timeout_ms=i.timeout_ms,
                                   count=i.credit, flags=i.flags)
        else:
            frames = protocol.pack(signer, Kind.BATCH, 0, session.next_seq(), session.session, main_session,
                                   self._name, "", "", (records(items, self._name),), count=len(items))
        try:
            dealer.send_locked(frames)
        except zmq.Again:
            self._stats["dropped_hwm"] += len(items)
            self._stats["messages_out"] -= len(items)
            return [(item, QueueFull(MAIN_NAME, "the queue to the main was full when the call was to leave"))
                    for item in items]
        except (zmq.ZMQError, Closed):
            self._stats["messages_out"] -= len(items)
            return [(item, PeerLost("the connection to the main closed before the call could leave"))
                    for item in items]
        session.sent(time.monotonic())
        return []

    def _fail_corked(self, failed: list[tuple[Corked, Exception]]) -> None:
        """Corked calls that never left: their callers are told why, nothing waits."""
        for item, error in failed:
            future = self._pending.pop(item.msg_id)
            if future is not None:
                fail(future, error)

    def say_goodbye(self) -> None:
        if self.session.connected:
            self.send(Kind.BYE, 0, "", "", ())
        self.session.connected = False

    def drop_sockets(self, linger_ms: int = 0) -> None:
        self._drop_probe()
        dealer, self.dealer = self.dealer, None
        if self._monitor is not None:
            self._loop.remove_socket(self._monitor)
            if dealer is not None:
                with dealer.lock:
                    dealer.socket.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
        if dealer is not None:
            self._loop.remove_shared(dealer)
            dealer.close(linger_ms)
            with dealer.lock:  # closed: nothing corks after this; what did is failed with its pending call
                self._outbox.take()
        self.sub.close(linger_ms)


_ON_ANSWER = Link._HANDLERS[Kind.REPLY]  # answers are settled by whoever reads them
_ON_ITEM = Link._HANDLERS[Kind.ITEM]  # and stream items delivered
