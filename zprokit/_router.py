"""The main's ROUTER: every message in, checked once, handed to its kind's one handler;
every message out, numbered and signed under the socket's lock.

In: ``protocol.unpack`` (the MAC, the version, the size), then the session
(``MainSession.hello``, ``register`` or ``admit``: the sender's key, the
sessions, the routing id, the replay guard), then the kind's handler below.
Requests for the main's own handlers go to ``Server``; what windows send to
windows, and answers to it, go to ``Relay``. Runs on the I/O thread.

Out: ``send_to`` from any thread: the ROUTER is a ``SharedSocket``, and a
message is numbered, signed and sent in one step under its lock, so numbers
leave in order.
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections import Counter
from typing import Any, Callable, Mapping

import zmq
from zmq.utils.monitor import parse_monitor_message

from . import protocol
from ._dispatch import Dispatcher
from ._groups import Balancer
from ._loop import IOLoop, SharedSocket
from ._main_sockets import peer_address, source_fd
from ._ratelimit import RateLimitedLog
from ._relay import Relay
from ._requests import PendingRequests, fail
from ._serve import Server
from ._streams import ReplyStream, live_streams
from .errors import Closed, PeerLost, QueueFull
from .protocol import Kind, Message, Rejected
from .security import REJECTION_REASONS, user_id
from .serializers import Serializer
from .session import MAIN_NAME, Contest, HelloDecision, MainSession, Peer, Refuse, Unwelcome

log = logging.getLogger("zprokit.main")

__all__ = ["Router"]


class Router:
    """The ROUTER's traffic; see the module docstring. ``stats`` and ``rejected`` are counted on
    the I/O thread, or under the socket's lock (sends)."""

    def __init__(
        self,
        sock: SharedSocket,
        monitor: zmq.Socket[Any],
        loop: IOLoop,
        dispatch: Dispatcher,
        signer: protocol.Signer,
        session: MainSession,
        pending: PendingRequests,
        serializer: Serializer,
        *,
        max_size: int | None,
        max_queued: int,
        handlers: Mapping[str, tuple[Callable[..., Any], bool, bool]],
        welcome: Callable[[str, str], dict[str, Any]],
        forget_login: Callable[[str, str], None],
        on_registered: Callable[[Peer], None],
        on_ready: Callable[[Peer], None],
        on_left: Callable[[Peer, str], None],
    ) -> None:
        self.sock = sock
        self._monitor = monitor
        self._loop = loop
        self._signer = signer
        self.session = session
        self._pending = pending
        self._serializer = serializer
        self._max_size = max_size
        self._welcome = welcome  # (name, nonce) -> the socket facts WELCOME adds (PUB address, login)
        self._forget_login = forget_login  # (name, nonce): the PUB port no longer admits that login
        # What Main does beside: wake waiters, call the user's listeners.
        self._tell_registered = on_registered
        self._tell_ready = on_ready
        self._tell_left = on_left
        self._heartbeat = session.heartbeat
        self.stats: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self._warn = RateLimitedLog(log)
        self._sweep_due = False
        self.closing = False  # set by Main.close(): liveness stops dropping windows (and telling listeners)
        self.batching = False  # the loop is working through a batch of messages (see Server._answerer)
        self.server = Server(self, loop, dispatch, serializer, handlers, max_queued)
        self.balancer = Balancer(session)  # before the relay, which picks group members with it
        self.relay = Relay(self)
        # The main's own streams from windows (main_stream_from_render), by msg_id; weak: a stream
        # its consumer dropped goes (and has told its producer: see ReplyStream.__del__).
        self.streams: weakref.WeakValueDictionary[int, ReplyStream[Any]] = weakref.WeakValueDictionary()

    # ------------------------------------------------------------------ in (I/O thread)

    def on_message(self, raw: Any) -> None:
        """One message: ``raw[0]`` the routing id (bytes), then ``zmq.Frame``s (the last one
        carries the metadata: the CURVE User-Id, the peer address); or one a BATCH carried."""
        self.batching = True  # until end_batch
        self.stats["messages_in"] += 1
        try:
            if type(raw) is _Carried:
                self._handle_carried(raw)
            else:
                self._receive(raw)
        except Rejected as e:
            self.reject(e.reason, e, None if type(raw) is _Carried else raw)

    def _receive(self, raw: list[Any]) -> None:
        ident = raw[0]
        frames = [frame.buffer for frame in raw[1:]]
        try:
            msg = protocol.unpack(self._signer, frames, max_size=self._max_size)
        except Rejected as e:
            if e.reason == "bad_signature" and protocol.peek_kind(frames) == Kind.HELLO:
                # Probably a window with the wrong key, handshaking: tell it plainly, unsigned.
                self._send_raw(ident, protocol.DENIAL)
            raise
        kind, now = msg.kind, time.monotonic()
        user = user_id(raw[-1]) if self.session.curve else None
        if kind == Kind.HELLO:
            self._answer_hello(ident, msg, self.session.hello(ident, msg, now, user))
            return
        try:
            if kind == Kind.REGISTER:
                peer = self.session.register(ident, msg, now, user=user, address=peer_address(raw[-1]),
                                             fd=source_fd(raw[-1]), wall=time.time())
                if peer is not None:
                    self.registered(peer)
                return
            peer = self.session.admit(ident, msg, now, user)
        except Unwelcome as e:
            self.reject(e.reason, e, raw)  # counted first: the answer below may fail (QueueFull)
            if e.tell is not None:
                self._send_signed(ident, Kind.ERROR, msg.msg_id, msg.session, "", msg.source,
                                  [protocol.encode_body({**protocol.error_body(PeerLost(e.tell), MAIN_NAME),
                                                         **({"rejoin": True} if e.rejoin else {})})])
            return
        if kind == Kind.BATCH:  # what the window had ready together: each next, as if it came alone
            carried = [_Carried(peer, inner) for inner in protocol.unbatch(msg)]
            self.stats["messages_in"] -= 1  # each message it carries is counted
            if not self._loop.expand(carried):
                for item in carried:
                    self.on_message(item)
            return
        handler = self._HANDLERS.get(kind)
        if handler is None:
            raise Rejected("malformed", f"unexpected {kind.name} from {peer.name}")
        handler(self, peer, msg)

    def _handle_carried(self, item: _Carried) -> None:
        """A message of a BATCH, admitted with it: handled unless its window left meanwhile."""
        peer, msg = item.peer, item.msg
        handler = self._HANDLERS.get(msg.kind)
        if handler is None:  # an ACK: the main asks nothing that a window acknowledges
            raise Rejected("malformed", f"unexpected {msg.kind.name} in a batch from {peer.name}")
        if self.session.windows.get(peer.name) is peer:
            handler(self, peer, msg)

    def end_batch(self) -> None:
        """The end of a batch of messages: what it produced leaves together (I/O thread)."""
        self.batching = False
        self.server.flush()
        self.relay.flush()

    def in_loop(self) -> bool:
        return self._loop.in_loop

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread."""
        self._loop.call_soon(fn)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread in ``delay`` s."""
        self._loop.call_later(delay, fn)

    def reject(self, reason: str, detail: Any = "", raw: list[Any] | None = None) -> None:
        self.rejected[reason] += 1
        peer = _PeerAddress(raw[-1] if raw else None)  # looked up only if the line is written
        if reason in REJECTION_REASONS:  # a sign of an attack or a misconfigured peer: say so, but not per message
            self._warn.warning(reason, "main dropped a message from %s (%s): %s", peer, reason, detail)
        else:
            log.debug("main dropped a message from %s: %s %s", peer, reason, detail)

    # --- the handshake ----------------------------------------------------------------

    def _answer_hello(self, ident: bytes, hello: Message, decision: HelloDecision) -> None:
        if isinstance(decision, Refuse):
            self.reject(decision.counter, decision.message)
            body = {"reason": decision.reason, "message": decision.message}
            self._send_signed(ident, Kind.REFUSE, hello.msg_id, hello.session, "", "", [protocol.encode_body(body)])
        elif isinstance(decision, Contest):
            # The holder is asked; the newcomer is answered once we know: after a heartbeat, or at
            # once when the holder is unreachable (send_to dropped it, and the name is free). A
            # holder whose queue is full is busy, not gone: it gets its heartbeat too.
            if self.send_to(decision.name, Kind.PING) or decision.name in self.session.windows:
                self._loop.call_later(self._heartbeat, functools.partial(self._settle_contest, decision.name))
            else:
                self._settle_contest(decision.name)
        else:
            # max_payload: the largest message we read, so the window refuses a larger one
            # before sending it (with an error that says so) instead of waiting out its timeout.
            body = {**decision.body, **self._welcome(decision.name, decision.nonce)}
            self._send_signed(ident, Kind.WELCOME, hello.msg_id, hello.session, MAIN_NAME, decision.name,
                              [protocol.encode_body(body)])

    def _settle_contest(self, name: str) -> None:
        settled = self.session.settle_contest(name, time.monotonic())
        if settled.dropped is not None:
            self._left(settled.dropped, f"did not answer a ping within {self._heartbeat} s")
        self._answer_hello(settled.ident, settled.hello, settled.decision)

    def registered(self, peer: Peer) -> None:
        """Both of the window's channels are live: tell it, and the main's listeners."""
        self.send_to(peer.name, Kind.REGISTERED)
        log.info("window %r connected (host %s, pid %s)", peer.name, peer.info.host, peer.info.pid)
        self._tell_registered(peer)

    # --- liveness and hang-ups ---------------------------------------------------------

    def tick(self) -> None:
        """Every quarter heartbeat: windows silent for ``heartbeat * liveness`` s leave."""
        if self.closing or self.sock.closed:
            return
        self._loop.call_later(self._heartbeat / 4, self.tick)
        silent, lapsed = self.session.tick(time.monotonic())
        for name, reason in silent:
            self.drop(name, reason)
        for name, nonce in lapsed:  # a handshake that never finished: its PUB login goes too
            self._forget_login(name, nonce)

    def on_monitor(self) -> None:
        """A connection closed: its descriptor (the event's value) names the window, if it was one.

        A ping to that window finds out whether it is gone, since with ROUTER_MANDATORY a
        send to a vanished routing id fails at once; the pipe goes away shortly after the
        event, so look a moment later. Constant work per hang-up: a stranger connecting and
        hanging up in a loop costs a dict look-up each, never a ping to every window.
        Windows whose descriptor ZeroMQ did not tell are swept, at most once a heartbeat.
        """
        while True:
            try:
                event = parse_monitor_message(self._monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
            self.stats["disconnects"] += 1
            name = self.session.by_fd.get(int(event["value"]))
            if name is not None:
                self._loop.call_later(0.05, functools.partial(self._ping, name))
            elif not self._sweep_due and any(w.fd is None for w in self.session.windows.values()):
                self._sweep_due = True
                self._loop.call_later(max(0.05, self._heartbeat), self._sweep)

    def _ping(self, name: str) -> None:
        self.send_to(name, Kind.PING)

    def _sweep(self) -> None:
        self._sweep_due = False
        for name in [n for n, w in self.session.windows.items() if w.fd is None]:
            self.send_to(name, Kind.PING)

    def drop(self, name: str, reason: str) -> None:
        """Remove window ``name`` from the registry, failing everything pending on it (I/O thread)."""
        peer = self.session.drop(name)
        if peer is not None:
            self._left(peer, reason)

    def end_calls(self) -> None:
        """The main closed: its streams end with ``Closed``; handlers still running are told."""
        for _, stream in live_streams(self.streams):
            stream.finish(Closed(f"{stream.description}: the main was closed with the stream open"))
        for call in list(self.session.serving.values()):
            call.cancel()

    def _left(self, peer: Peer, reason: str) -> None:
        name = peer.name
        self._forget_login(name, peer.nonce)
        lost = PeerLost(f"window {name!r} left ({reason}) with the request pending")
        self._pending.fail_all(lambda future: lost, target=name)
        for msg_id, stream in live_streams(self.streams):
            if stream.peer == name:
                self.streams.pop(msg_id, None)
                stream.finish(lost)
        answering, asked = self.session.routes_to(name)
        for route in answering:
            if not self.relay.send_on(route, lost):  # a group call with retries left goes to another member
                self.send_error(route.source, route.source_msg_id, lost)
        for msg_id, route in asked:  # its caller is gone: the callee stops (a producer closes its generator)
            self.send_to(route.target, Kind.CANCEL, msg_id, origin=name)
        self.relay.window_left(peer, lost)
        log.info("window %r disconnected (%s)", name, reason)
        self._tell_left(peer, reason)

    # --- messages from registered windows ----------------------------------------------

    def _on_request(self, peer: Peer, msg: Message) -> None:
        if msg.target:
            self.relay.route_soon(peer.name, msg)
        else:
            self.server.serve(peer, msg)

    def _on_one_way(self, peer: Peer, msg: Message) -> None:
        if msg.target:
            self.relay.route_soon(peer.name, msg)
        else:
            self.reject("malformed", f"one-way message to main from {peer.name!r}")

    def _on_stream(self, peer: Peer, msg: Message) -> None:
        if msg.target:
            self.relay.route_soon(peer.name, msg)
        else:
            self.server.serve_stream(peer, msg)

    def _on_stream_item(self, peer: Peer, msg: Message) -> None:
        """An ITEM or END: of a window -> window stream, or of one of ours (else a late one: dropped)."""
        if self.relay.answer(peer, msg):
            return
        stream = self.streams.get(msg.msg_id)
        if stream is None or stream.peer != peer.name:
            return  # its consumer closed it: items already on their way are dropped
        if msg.kind == Kind.ITEM:
            stream.deliver(msg.payload)
        else:
            self.streams.pop(msg.msg_id, None)
            stream.finish(protocol.error_from_body(protocol.decode_body(msg.payload)) if msg.payload else None)

    def _on_more(self, peer: Peer, msg: Message) -> None:
        """A stream's consumer took ``count`` more items: routed on, or credit for our producer."""
        if msg.target:
            self.relay.more(peer.name, msg.msg_id, msg.count)
            return
        call = self.session.serving.get((peer.session, msg.msg_id))
        if call is not None and call.more is not None:
            call.more(msg.count)

    def _on_answer(self, peer: Peer, msg: Message) -> None:
        """A REPLY or ERROR: to a window -> window request, or to our ``main_call_render``, or an
        ERROR ending one of our streams."""
        if self.relay.answer(peer, msg):
            return
        if msg.kind == Kind.ERROR:
            stream = self.streams.get(msg.msg_id)
            if stream is not None and stream.peer == peer.name:
                self.streams.pop(msg.msg_id, None)
                stream.finish(protocol.error_from_body(protocol.decode_body(msg.payload)))
                return
        future = self._pending.pop(msg.msg_id, answered_by=peer.name)  # only the window we asked
        if future is None:
            self.reject("unexpected_reply", f"{msg.kind.name} {msg.msg_id} from {peer.name!r}")
            return
        try:
            if msg.kind == Kind.REPLY:
                future.set_result(self._serializer.loads(msg.payload))
            else:
                future.set_exception(protocol.error_from_body(protocol.decode_body(msg.payload)))
        except Exception as e:
            fail(future, e)

    def _on_cancel(self, peer: Peer, msg: Message) -> None:
        """Window ``peer`` gave up its request ``msg_id``: not started, it never will be."""
        if msg.target:
            self.relay.cancel(peer.name, msg.msg_id)
        else:
            self.session.cancel_served(peer, msg.msg_id)

    def _on_bye(self, peer: Peer, msg: Message) -> None:
        self.drop(peer.name, "closed")

    def _on_ready(self, peer: Peer, msg: Message) -> None:
        if self.session.ready(peer):
            self._tell_ready(peer)

    def _on_unhandled(self, peer: Peer, msg: Message) -> None:
        """A window had no callback for a one-way message: counted here, where senders look."""
        self.stats["unhandled"] += 1
        self._warn.warning("unhandled", "window %r had no callback on channel %r for a message from %s",
                           peer.name, msg.channel, msg.target or MAIN_NAME)

    def _on_credit(self, peer: Peer, msg: Message) -> None:
        self.relay.credit(peer, msg.msg_id)

    def _on_ping(self, peer: Peer, msg: Message) -> None:
        self.send_to(peer.name, Kind.PONG, msg.msg_id)

    def _on_pong(self, peer: Peer, msg: Message) -> None:
        pass  # any verified traffic is a sign of life; nothing else to do

    _HANDLERS: Mapping[Kind, Callable[["Router", Peer, Message], None]] = {
        Kind.REQUEST: _on_request,
        Kind.MESSAGE: _on_one_way,
        Kind.REPLY: _on_answer,
        Kind.ERROR: _on_answer,
        Kind.BYE: _on_bye,
        Kind.PING: _on_ping,
        Kind.PONG: _on_pong,
        Kind.CANCEL: _on_cancel,
        Kind.READY: _on_ready,
        Kind.UNHANDLED: _on_unhandled,
        Kind.CREDIT: _on_credit,
        Kind.STREAM: _on_stream,
        Kind.ITEM: _on_stream_item,
        Kind.END: _on_stream_item,
        Kind.MORE: _on_more,
    }

    # ------------------------------------------------------------------ out (any thread)

    def send_to(
        self,
        name: str,
        kind: Kind,
        msg_id: int = 0,
        channel: str = "",
        payload: Any = (),
        *,
        origin: str = "",
        served: bool = False,
        raise_full: bool = False,
        timeout_ms: int = 0,
        count: int = 0,
        flags: int = 0,
    ) -> bool:
        """Sign and send to registered window ``name``; False if it cannot be reached (then it is dropped).

        ``served``: this is a handler's answer, counted in ``requests_served``.
        A window whose queue is full stays registered (it is alive, only
        slow): with ``raise_full`` the sender gets ``QueueFull``, otherwise
        False (the message is counted in ``dropped_hwm`` and logged).
        """
        peer = self.session.windows.get(name)
        if peer is None:
            return False
        try:
            if self._send_signed(peer.ident, kind, msg_id, peer.session, origin, name, payload, channel, served,
                                 timeout_ms=timeout_ms, count=count, flags=flags):
                return True
        except QueueFull:
            if raise_full:
                raise
            return False

        def drop() -> None:
            if self.session.windows.get(name) is peer:
                self.drop(name, "unreachable")

        if self._loop.in_loop:
            drop()
        else:
            self._loop.call_soon(drop)
        return False

    def send_error(self, name: str, msg_id: int, exc: BaseException) -> None:
        self.send_to(name, Kind.ERROR, msg_id, "", [protocol.encode_body(protocol.error_body(exc, MAIN_NAME))])

    def _send_signed(self, ident: bytes, kind: Kind, msg_id: int, peer_session: bytes, source: str, target: str,
                     payload: Any, channel: str = "", served: bool = False, *, timeout_ms: int = 0, count: int = 0,
                     flags: int = 0) -> bool:
        """Number, sign and send in one step under the ROUTER's lock, so numbers go out in order."""
        with self.sock.lock:
            if served:  # counted before it leaves, so a caller that has its answer sees the count
                self.stats["requests_served"] += 1  # under the lock: handlers answer from many threads
            sent = False
            try:
                frames = protocol.pack(self._signer, kind, msg_id, self.session.next_seq(), self.session.session,
                                       peer_session, source, target, channel, payload, timeout_ms=timeout_ms,
                                       count=count, flags=flags)
                sent = self._send_locked(ident, frames)
            finally:
                if served and not sent:
                    self.stats["requests_served"] -= 1
            return sent

    def send_replies(self, replies: list[tuple[Peer, int, Any]]) -> None:
        """Send handlers' one-part replies under the ROUTER's lock: those to one window in one
        BATCH (one frame, one MAC, one send), and all in one run (which wakes libzmq's I/O thread
        once). One that fails takes the general path, which reports it."""
        failed: list[tuple[Peer, int, Any]] = []
        runs: dict[int, tuple[Peer, list[tuple[int, Any]]]] = {}
        for peer, msg_id, data in replies:  # by window, in order
            runs.setdefault(id(peer), (peer, []))[1].append((msg_id, data))
        sock, session, signer = self.sock, self.session, self._signer
        with sock.lock:
            for peer, run in runs.values():
                sizes = [protocol.BATCH_RECORD + (len(data) if type(data) is bytes else memoryview(data).nbytes)
                         for _, data in run]
                for start, end in protocol.batch_runs(sizes, protocol.batch_room(peer.max_size)):
                    part = run[start:end]
                    if len(part) == 1:
                        msg_id, data = part[0]
                        frames = protocol.pack(signer, Kind.REPLY, msg_id, session.next_seq(), session.session,
                                               peer.session, "", peer.name, "", (data,))
                    else:
                        records = b"".join([protocol.batch_item(Kind.REPLY, msg_id, data) for msg_id, data in part])
                        frames = protocol.pack(signer, Kind.BATCH, 0, session.next_seq(), session.session,
                                               peer.session, "", peer.name, "", (records,), count=len(part))
                    self.stats["requests_served"] += len(part)  # before it leaves: see _send_signed
                    try:
                        sock.send_locked([peer.ident, *frames], check=False)
                    except (zmq.ZMQError, Closed):
                        self.stats["requests_served"] -= len(part)
                        failed.extend((peer, msg_id, data) for msg_id, data in part)
                    else:
                        self.stats["messages_out"] += len(part)
            if replies and not sock.closed:
                sock.check_input_locked()
        for peer, msg_id, data in failed:
            self.send_to(peer.name, Kind.REPLY, msg_id, "", (data,), served=True)

    def _send_raw(self, ident: bytes, frames: list[Any]) -> bool:
        try:
            with self.sock.lock:
                return self._send_locked(ident, frames)
        except QueueFull:
            return False

    def _send_locked(self, ident: bytes, frames: list[Any]) -> bool:
        try:
            self.sock.send_locked([ident, *frames])
        except Closed:
            self.stats["unroutable"] += 1
            return False
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                self.stats["unroutable"] += 1
                return False
            if e.errno == zmq.EAGAIN:
                # The peer's queue is full: counted, and the sender told (QueueFull); never a silent drop.
                self.stats["dropped_hwm"] += 1
                # Rate-limited: a stranger who floods us and never reads would otherwise get a line per message.
                self._warn.warning("dropped_hwm", "main: send queue to %r is full; message not sent", ident)
                raise QueueFull(protocol.routing_name(ident).decode(errors="replace")) from e
            raise Closed(f"the main's ROUTER failed: {e}") from e
        self.stats["messages_out"] += 1
        return True


class _Carried:
    """A message a BATCH carried, with the window it came from (checked once, with the BATCH)."""

    __slots__ = ("peer", "msg")

    def __init__(self, peer: Peer, msg: Message) -> None:
        self.peer, self.msg = peer, msg




class _PeerAddress:
    """A message's peer address for a log line, looked up when the line is written."""

    __slots__ = ("_frame",)

    def __init__(self, frame: Any) -> None:
        self._frame = frame

    def __str__(self) -> str:
        return peer_address(self._frame) or "an unknown address"
