"""Main: binds the ROUTER (requests, routing by window name) and the XPUB (broadcasts).

Threads: the caller's, one I/O thread that owns both sockets (``IOLoop``),
and a small pool for user handlers (``Dispatcher``). The I/O thread verifies
every message before anything else looks at it, answers what needs no user
code (handshakes, routing, errors), and hands handler calls to the pool.
Payloads routed window -> window are forwarded as they came, never
unpickled in the main.

The handshake, designed around libzmq issue 4503 (a ROUTER silently ignores
a second connection that claims a routing id in use):

1. the window's *probe* socket (a random routing id) sends HELLO with the
   name it wants; the main answers REFUSE (``NameInUse``, serializer
   mismatch) or WELCOME with its session, the PUB address and a nonce, and
   reserves the name for that nonce for a while;
2. the window connects its DEALER under the name (the ROUTER has
   ``ROUTER_HANDOVER``, so a half-open old connection cannot block it) and its
   SUB, subscribes to a control topic that names the nonce, and sends
   REGISTER with the nonce;
3. the main registers the window and answers REGISTERED once the XPUB has
   seen the control subscription too, so both channels are live when
   ``init_expose_in_main_world`` returns.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import secrets
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import zmq

from . import protocol
from ._callbacks import DEFAULT_CHANNEL, Listeners, registrar
from ._common import DEFAULT_TIMEOUT, MAIN_NAME, check_channel, check_timeout, fail
from ._dispatch import Dispatcher, call_handler
from ._futures import ReplyFuture
from ._loop import IOLoop
from .errors import Closed, NoHandler, PeerLost, Timeout, WindowNotFound
from .events import Event, WindowInfo
from .protocol import Header, Kind, Rejected
from .security import resolve_key
from .serializers import Serializer, get_serializer

log = logging.getLogger(__name__)

__all__ = ["Main"]

DEFAULT_ENDPOINT = "tcp://127.0.0.1:0"
SYSTEM_PREFIX = "zprokit."


@dataclass
class _Window:
    info: WindowInfo
    session: bytes
    last_seen: float  # time.monotonic() of its last verified message
    messages: int = 0


@dataclass
class _Reservation:
    nonce: str
    expires: float
    hello: dict[str, Any]


@dataclass
class _Pending:
    future: ReplyFuture
    target: str


@dataclass
class _Route:
    """A request forwarded window -> window: whom to answer, under which id."""

    source: str
    source_msg_id: int
    target: str
    kind: Kind


class Main:
    """The main process's node. See the module docstring for how it works.

    Parameters: ``endpoint`` to bind the ROUTER (``tcp://127.0.0.1:0`` picks a
    free port; ``main.endpoint`` tells the bound one); ``key`` (bytes or str;
    else ``ZPROKIT_KEY``; else random, loopback and ipc only);
    ``pub_endpoint`` for the broadcast socket (default: same host, any port);
    ``request_timeout``, the default timeout of requests in seconds; ``workers``, the handler pool's
    size; ``serializer`` (``"pickle"`` or ``"json"``); ``max_message_size``,
    the largest message accepted, in bytes; ``context``, a ``zmq.Context`` to
    use instead of a private one.

    Liveness: windows ping the main when they have been quiet for a
    ``heartbeat`` (the main answers on its I/O thread, whatever its handlers
    are doing); a window not heard from for ``heartbeat * liveness``
    seconds leaves the registry, and everything pending on it fails with
    ``PeerLost``. Pass the same ``heartbeat`` and ``liveness`` to the windows.

    Raises ``ValueError`` for a non-loopback bind without a key, and
    ``zmq.ZMQError`` when the endpoint cannot be bound.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        key: bytes | str | None = None,
        pub_endpoint: str | None = None,
        request_timeout: float = DEFAULT_TIMEOUT,
        workers: int = 8,
        serializer: str | Serializer | None = None,
        max_message_size: int | None = None,
        heartbeat: float = 1.0,
        liveness: int = 3,
        linger: float = 1.0,
        context: zmq.Context | None = None,
    ) -> None:
        endpoint = endpoint or os.environ.get("ZPROKIT_ENDPOINT") or DEFAULT_ENDPOINT
        self.heartbeat = check_timeout(heartbeat)
        if liveness < 1:
            raise ValueError("liveness must be at least 1 heartbeat")
        self.liveness = int(liveness)
        self.key = resolve_key(key, endpoint=endpoint, role="main")
        self.request_timeout = check_timeout(request_timeout)
        self.serializer = get_serializer(serializer)
        self.max_message_size = max_message_size
        self.session = secrets.token_bytes(protocol.SESSION_SIZE)
        self._signer = protocol.Signer(self.key)
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._linger_ms = int(linger * 1000)

        self._router = self._ctx.socket(zmq.ROUTER)
        self._pub = self._ctx.socket(zmq.XPUB)
        try:
            for sock in (self._router, self._pub):
                sock.setsockopt(zmq.LINGER, self._linger_ms)
                if max_message_size is not None:
                    sock.setsockopt(zmq.MAXMSGSIZE, max_message_size)
            self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self._router.setsockopt(zmq.ROUTER_HANDOVER, 1)
            self._router.bind(_bindable(endpoint))
            self.endpoint: str = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
            self._pub.bind(_bindable(pub_endpoint or _default_pub_endpoint(self.endpoint)))
            self.pub_endpoint: str = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        except Exception:
            self._router.close(0)
            self._pub.close(0)
            if self._own_context:
                self._ctx.term()
            raise

        # I/O-thread state
        self._windows: dict[str, _Window] = {}  # registered: both channels live
        self._joining: dict[str, _Window] = {}  # REGISTER seen, XPUB subscription not yet
        self._contests: dict[str, tuple[bytes, protocol.Message, float]] = {}
        self._reservations: dict[str, _Reservation] = {}
        self._subscriptions: set[bytes] = set()
        self._awaiting_sub: dict[bytes, str] = {}
        self._pending: dict[int, _Pending] = {}
        self._routes: dict[int, _Route] = {}
        self._guard = protocol.ReplayGuard()
        self._seq = itertools.count(1)
        self._bseq = itertools.count(1)
        self._ids = itertools.count(1)
        self._stats: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()

        # user-facing state, shared
        self._handlers: dict[str, tuple[Callable[..., Any], bool]] = {}
        self._connected_cbs = Listeners()
        self._disconnected_cbs = Listeners()
        self._window_waiters: dict[str, list[threading.Event]] = {}
        self._processes: list[Any] = []
        self._closed = False
        self._close_lock = threading.Lock()

        # Built-in channels for the command-line tools; answered inline, they never wait.
        self._handlers[SYSTEM_PREFIX + "ping"] = (lambda event, args: args, True)
        self._handlers[SYSTEM_PREFIX + "windows"] = (lambda event, args: self._describe_windows(), True)

        self._dispatch = Dispatcher(f"zprokit-main-{os.getpid()}", workers)
        self._loop = IOLoop(f"zprokit-main-io-{os.getpid()}")
        self._loop.add_socket(self._router, self._on_router)
        self._loop.add_socket(self._pub, self._on_xpub)
        # A closed connection (a window that crashed, on this host or another) shows up
        # here at once; heartbeats are only needed for links that die without a word.
        self._monitor = self._router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._loop.add_socket(self._monitor, self._on_monitor)
        self._loop.start(on_stop=self._close_sockets)
        self._loop.call_soon(lambda: self._loop.call_later(self.heartbeat, self._check_liveness))
        log.info("main listening on %s (broadcasts on %s)", self.endpoint, self.pub_endpoint)

    # ------------------------------------------------------------------ handlers

    def on_msg_from_render(
        self, handler: Any = None, channel: str = DEFAULT_CHANNEL, *, replace: bool = False, inline: bool = False
    ) -> Any:
        """Register ``handler(event, args)`` for requests on ``channel``; its return value is the reply.

        Usable as ``main.on_msg_from_render(fn)``, ``@main.on_msg_from_render``
        or ``@main.on_msg_from_render(channel="sum")``. ``async def`` handlers
        are awaited. An exception in the handler reaches the caller as
        ``RemoteError``. One handler per channel: a second registration
        raises ``ValueError`` unless ``replace=True``. ``inline=True`` runs
        the handler on the I/O thread (fastest; only for handlers that never
        block). Returns the handler.
        """
        return registrar(self._register_handler, handler, {"channel": channel, "replace": replace, "inline": inline})

    def _register_handler(self, handler: Callable[..., Any], channel: str, replace: bool, inline: bool) -> None:
        check_channel(channel)
        if channel.startswith(SYSTEM_PREFIX):
            raise ValueError(f"channels starting with {SYSTEM_PREFIX!r} are zprokit's own")
        if channel in self._handlers and not replace:
            raise ValueError(f"channel {channel!r} already has a handler; pass replace=True to swap it")
        self._handlers[channel] = (handler, inline)

    def off_msg_from_render(self, channel: str = DEFAULT_CHANNEL) -> bool:
        """Remove the handler of ``channel``; True if there was one."""
        return self._handlers.pop(channel, None) is not None

    def on_window_connected(self, cb: Callable[[WindowInfo], Any]) -> Callable[[WindowInfo], Any]:
        """Call ``cb(info)`` (off the I/O thread) whenever a window registers. Returns ``cb``."""
        self._connected_cbs.add(None, cb)
        return cb

    def on_window_disconnected(self, cb: Callable[[WindowInfo], Any]) -> Callable[[WindowInfo], Any]:
        """Call ``cb(info)`` whenever a window leaves the registry. Returns ``cb``."""
        self._disconnected_cbs.add(None, cb)
        return cb

    def off_window_connected(self, cb: Callable[[WindowInfo], Any]) -> bool:
        return self._connected_cbs.remove(cb)

    def off_window_disconnected(self, cb: Callable[[WindowInfo], Any]) -> bool:
        return self._disconnected_cbs.remove(cb)

    # ------------------------------------------------------------------ sending

    def main_msg_to_render(self, name: str, msg: Any, *, channel: str = DEFAULT_CHANNEL) -> None:
        """Send ``msg`` one-way to window ``name``'s ``on_msg_from_main`` callbacks.

        Raises ``WindowNotFound`` at once if no window of that name is
        connected, ``Closed`` after ``close()``.
        """
        self._check_open()
        check_channel(channel)
        if name not in self._windows:
            raise WindowNotFound(name)
        payload = self.serializer.dumps(msg)
        self._loop.call_soon(lambda: self._send_to(name, Kind.MESSAGE, 0, channel, payload, origin=""))

    def main_call_render(
        self, name: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None
    ) -> ReplyFuture:
        """Ask window ``name``; the future resolves to the return value of its first callback on ``channel``.

        The future raises ``WindowNotFound``, ``NoHandler``, ``RemoteError``,
        ``PeerLost`` (the window left), ``Timeout`` (after ``timeout`` s,
        default ``request_timeout``) or ``Closed``. ``WindowNotFound`` is raised
        at once when the name is unknown.
        """
        self._check_open()
        check_channel(channel)
        if name not in self._windows:
            raise WindowNotFound(name)
        payload = self.serializer.dumps(msg)
        timeout = self.request_timeout if timeout is None else check_timeout(timeout)
        future = ReplyFuture(f"main_call_render({name!r}, channel={channel!r})")
        future.set_running_or_notify_cancel()
        msg_id = next(self._ids)

        def send() -> None:
            self._pending[msg_id] = _Pending(future, name)
            self._loop.call_later(timeout, lambda: self._expire(msg_id, timeout))
            if not self._send_to(name, Kind.REQUEST, msg_id, channel, payload, origin=""):
                self._pending.pop(msg_id, None)
                fail(future, WindowNotFound(name))

        self._loop.call_soon(send)
        return future

    def broadcast(self, msg: Any, *, topic: str = "") -> None:
        """Publish ``msg`` to every window whose ``on_broadcast`` topic is a prefix of ``topic``."""
        self._check_open()
        check_channel(topic, what="topic")
        payload = self.serializer.dumps(msg)

        def send() -> None:
            header = Header(Kind.BROADCAST, 0, next(self._bseq), self.session, protocol.NO_SESSION, "", "", topic)
            frames = protocol.pack(self._signer, header, payload, topic=protocol.BROADCAST_PREFIX + topic.encode())
            self._pub.send_multipart(frames, copy=False)
            self._stats["messages_out"] += 1
            self._stats["broadcasts"] += 1

        self._loop.call_soon(send)

    # ------------------------------------------------------------------ registry

    def get_window(self, name: str) -> WindowInfo | None:
        """The ``WindowInfo`` of connected window ``name``, or ``None``."""
        w = self._windows.get(name)
        return w.info if w else None

    def has_window(self, name: str) -> bool:
        return name in self._windows

    def get_all_windows(self) -> list[WindowInfo]:
        """Every connected window, in the order they registered."""
        return [w.info for w in list(self._windows.values())]

    def wait_for_window(self, name: str, timeout: float = 10.0) -> WindowInfo:
        """Block until window ``name`` is connected; raises ``Timeout`` after ``timeout`` s."""
        event = threading.Event()
        self._window_waiters.setdefault(name, []).append(event)
        try:
            if self.get_window(name) is None:
                event.wait(timeout)
            info = self.get_window(name)
            if info is None:
                raise Timeout(f"window {name!r} did not connect within {timeout} s")
            return info
        finally:
            waiters = self._window_waiters.get(name, [])
            if event in waiters:
                waiters.remove(event)

    def destroy_window(self, name: str, *, grace: float = 3.0) -> bool:
        """Ask window ``name`` to close; end its process after ``grace`` s if this main created it.

        Returns True if a connected window or a created process had that name.
        """
        self._check_open()
        found = False
        if name in self._windows:
            found = True
            self._loop.call_soon(lambda: self._send_to(name, Kind.CLOSE, 0, "", (), origin=""))
        for proc in [p for p in self._processes if p.name == name]:
            found = True
            threading.Thread(target=proc.stop, args=(grace,), name=f"zprokit-destroy-{name}", daemon=True).start()
        return found

    def create_window(self, name: str, target: Any, **options: Any) -> Any:
        """Start a window process on this machine; see ``zprokit.spawn.create_window``."""
        from .spawn import create_window

        self._check_open()
        handle = create_window(self, name, target, **options)
        self._processes.append(handle)
        return handle

    def stats(self) -> dict[str, Any]:
        """Counters: messages in and out, requests served, windows, rejections by reason."""
        stats: dict[str, Any] = {
            "messages_in": 0,
            "messages_out": 0,
            "requests_served": 0,
            "messages_routed": 0,
            "unhandled": 0,
        }
        stats.update(self._stats)
        stats["windows"] = len(self._windows)
        stats["rejected"] = dict(self._rejected)
        return stats

    def _describe_windows(self) -> list[dict[str, Any]]:
        now = time.time()
        return [
            {**dataclasses.asdict(w.info), "uptime": now - w.info.connected_since, "messages": w.messages, "session": None}
            for w in list(self._windows.values())
        ]

    # ------------------------------------------------------------------ lifecycle

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, *, grace: float = 3.0) -> None:
        """Say goodbye to every window, end created processes, stop the threads. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._loop.alive:
            self._loop.call_soon(self._say_goodbye)
        for proc in self._processes:
            proc.stop(grace)
        stopped = self._loop.stop()
        self._dispatch.close()
        if self._own_context and stopped:
            self._ctx.term()
        log.info("main on %s closed", self.endpoint)

    def __enter__(self) -> "Main":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._windows)} windows"
        return f"<zprokit.Main {self.endpoint} {state}>"

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("this main is closed")

    # ================================================================== I/O thread

    def _say_goodbye(self) -> None:
        for name in list(self._windows):
            self._send_to(name, Kind.BYE, 0, "", (), origin="")
        for msg_id, pending in list(self._pending.items()):
            fail(pending.future, Closed("the main was closed with the request pending"))
        self._pending.clear()

    def _close_sockets(self) -> None:
        for pending in self._pending.values():
            fail(pending.future, Closed("the main was closed with the request pending"))
        self._pending.clear()
        self._router.disable_monitor()
        self._monitor.close(0)
        self._router.close(self._linger_ms)
        self._pub.close(self._linger_ms)

    def _reject(self, reason: str, detail: Any = "") -> None:
        self._rejected[reason] += 1
        log.debug("main dropped a message: %s %s", reason, detail)

    def _on_monitor(self) -> None:
        while True:
            try:
                self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
        # Which window's connection closed is not said; a ping to each finds out, since
        # with ROUTER_MANDATORY a send to a vanished routing id fails at once. The pipe
        # goes away shortly after the event, so look a moment later.
        self._loop.call_later(0.05, self._sweep)

    def _sweep(self) -> None:
        for name in list(self._windows):
            self._send_to(name, Kind.PING, 0, "", (), origin="")

    def _on_xpub(self) -> None:
        while True:
            try:
                event = self._pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not event:
                continue
            topic = event[1:]
            if event[0] == 1:
                self._subscriptions.add(topic)
                name = self._awaiting_sub.pop(topic, None)
                if name is not None and name in self._joining:
                    self._complete_registration(name)
            elif event[0] == 0:
                self._subscriptions.discard(topic)

    def _on_router(self) -> None:
        router = self._router
        while True:
            try:
                frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._stats["messages_in"] += 1
            try:
                self._on_message(frames)
            except Rejected as e:
                self._reject(e.reason, e)

    def _on_message(self, raw: list[zmq.Frame]) -> None:
        ident = raw[0].bytes
        frames = [f.buffer for f in raw[1:]]
        try:
            msg = protocol.unpack(self._signer, frames, max_size=self.max_message_size)
        except Rejected as e:
            if e.reason == "bad_signature" and _looks_like_hello(frames):
                # Probably a window with the wrong key, handshaking: tell it plainly, unsigned.
                self._raw_send(ident, [protocol.VERSION, protocol.DENIED])
            raise
        h = msg.header
        if h.kind == Kind.HELLO:
            self._on_hello(ident, msg)
            return
        if h.peer_session != self.session:
            self._reject("stale_session", h.kind)
            if h.kind in (Kind.REQUEST, Kind.PING) or (h.kind == Kind.MESSAGE and h.target):
                # A window of an earlier main (or that we forgot): tell it, so it does not wait.
                self._raw_reply_error(ident, h, PeerLost("the main does not know this window; re-register"))
            return
        name = _decode_ident(ident)
        if h.kind == Kind.REGISTER:
            self._on_register(name, msg, _peer_address(raw[-1]))
            return
        window = self._windows.get(name)
        if window is None or window.session != h.session or h.source != name:
            self._reject("unregistered", name)
            return
        if not self._guard.accept(name, h.session, h.seq):
            self._reject("replay", name)
            return
        window.last_seen = time.monotonic()
        window.messages += 1
        handler = self._KIND_HANDLERS.get(h.kind)
        if handler is None:
            self._reject("malformed", f"unexpected {h.kind.name} from {name}")
            return
        handler(self, name, msg)

    # --- handshake ------------------------------------------------------------

    def _on_hello(self, ident: bytes, msg: protocol.Message, holder_answered: bool = False) -> None:
        h = msg.header
        body = protocol.decode_body(msg.payload)
        name = body.get("name")
        now = time.monotonic()

        def refuse(reason: str, message: str) -> None:
            self._rejected[f"refused_{reason}"] += 1
            reply = Header(Kind.REFUSE, h.msg_id, next(self._seq), self.session, h.session)
            self._raw_send(ident, protocol.pack(self._signer, reply, [protocol.encode_body({"reason": reason, "message": message})]))

        if not isinstance(name, str) or not name or name == MAIN_NAME or len(name.encode()) > 255:
            refuse("bad_name", f"window name must be a non-empty string other than {MAIN_NAME!r}, at most 255 bytes")
            return
        if body.get("serializer") != self.serializer.name:
            refuse(
                "serializer",
                f"the main uses the {self.serializer.name!r} serializer and the window "
                f"{body.get('serializer')!r}; give both the same serializer=",
            )
            return
        holder = self._windows.get(name)
        if holder is not None:
            if holder_answered or name in self._contests or now - holder.last_seen < self.heartbeat / 2:
                refuse("name_in_use", name)
                return
            # Quiet for a while: maybe dead (a restart of the same window, a
            # half-open connection). Ask it; answer the newcomer once we know.
            if self._send_to(name, Kind.PING, 0, "", (), origin=""):
                self._contests[name] = (ident, msg, now)
                self._loop.call_later(self.heartbeat, lambda: self._settle_contest(name))
                return
            # unreachable: _send_to dropped it, and the name is free
        held = self._reservations.get(name)
        if held is not None and held.expires > now:
            refuse("name_in_use", name)
            return
        nonce = secrets.token_hex(8)
        self._reservations[name] = _Reservation(nonce, now + _reservation_ttl(body), body)
        welcome = Header(Kind.WELCOME, h.msg_id, next(self._seq), self.session, h.session, MAIN_NAME, name)
        reply_body = {"nonce": nonce, "pub": self.pub_endpoint, "serializer": self.serializer.name}
        self._raw_send(ident, protocol.pack(self._signer, welcome, [protocol.encode_body(reply_body)]))

    def _settle_contest(self, name: str) -> None:
        ident, hello, started = self._contests.pop(name)
        holder = self._windows.get(name)
        answered = holder is not None and holder.last_seen >= started
        if holder is not None and not answered:
            self._drop_window(name, f"did not answer a ping within {self.heartbeat} s")
        # A holder that answered keeps its name; without the flag a holder quiet for more than
        # heartbeat/2 since its pong would be pinged again, and again, until the newcomer timed out.
        self._on_hello(ident, hello, holder_answered=answered)

    def _on_register(self, name: str, msg: protocol.Message, address: str) -> None:
        h = msg.header
        body = protocol.decode_body(msg.payload)
        held = self._reservations.get(name)
        if held is None or held.nonce != body.get("nonce") or h.source != name:
            self._reject("unregistered", f"REGISTER for {name!r} without a valid reservation")
            return
        if not self._guard.new_session(name, h.session, h.seq):
            self._reject("replay", f"REGISTER of a retired session of {name!r}")
            return
        del self._reservations[name]
        hello = held.hello
        info = WindowInfo(
            name=name,
            host=str(hello.get("host", "")),
            pid=int(hello.get("pid", 0) or 0),
            connected_since=time.time(),
            address=address,
            serializer=self.serializer.name,
            session=h.session.hex(),
        )
        self._joining[name] = _Window(info, h.session, time.monotonic())
        topic = protocol.CONTROL_PREFIX + f"{name}\0{held.nonce}".encode()
        if topic in self._subscriptions:
            self._complete_registration(name)
        else:
            self._awaiting_sub[topic] = name

    def _complete_registration(self, name: str) -> None:
        window = self._joining.pop(name)
        self._windows[name] = window
        self._send_to(name, Kind.REGISTERED, 0, "", (), origin="")
        log.info("window %r connected (host %s, pid %s)", name, window.info.host, window.info.pid)
        for event in self._window_waiters.get(name, ()):
            event.set()
        for cb in self._connected_cbs.get(None):
            self._dispatch.submit(lambda cb=cb: cb(window.info), lane="presence")

    def _check_liveness(self) -> None:
        """Heartbeat tick: windows not heard from for ``heartbeat * liveness`` s leave."""
        if self._closed:
            return
        self._loop.call_later(self.heartbeat, self._check_liveness)
        now = time.monotonic()
        limit = self.heartbeat * self.liveness
        for name, window in list(self._windows.items()):
            if now - window.last_seen > limit:
                self._drop_window(name, f"silent for {now - window.last_seen:.1f} s")
        for name, window in list(self._joining.items()):
            if now - window.last_seen > max(limit, 10.0):  # never subscribed: a failed join
                del self._joining[name]
                self._guard.forget(name)
        for name in [n for n, r in self._reservations.items() if r.expires < now]:
            del self._reservations[name]

    def _drop_window(self, name: str, reason: str) -> None:
        """Remove ``name`` from the registry, failing everything pending on it."""
        window = self._windows.pop(name, None)
        if window is None:
            return
        self._guard.forget(name)
        for topic in [t for t, n in self._awaiting_sub.items() if n == name]:
            del self._awaiting_sub[topic]
        lost = PeerLost(f"window {name!r} left ({reason}) with the request pending")
        for msg_id, pending in list(self._pending.items()):
            if pending.target == name:
                del self._pending[msg_id]
                fail(pending.future, lost)
        for msg_id, route in list(self._routes.items()):
            if route.target == name:
                del self._routes[msg_id]
                self._send_error(route.source, route.source_msg_id, lost)
            elif route.source == name:
                del self._routes[msg_id]
        log.info("window %r disconnected (%s)", name, reason)
        for cb in self._disconnected_cbs.get(None):
            self._dispatch.submit(lambda cb=cb: cb(window.info), lane="presence")

    # --- messages from registered windows ------------------------------------

    def _on_request(self, name: str, msg: protocol.Message) -> None:
        h = msg.header
        if h.target:
            self._route(name, msg)
            return
        entry = self._handlers.get(h.channel)
        if entry is None:
            self._send_error(name, h.msg_id, NoHandler(h.channel, MAIN_NAME))
            return
        handler, inline = entry
        event = Event(sender=name, channel=h.channel, kind="request", receiver=MAIN_NAME)
        payload = msg.payload
        msg_id = h.msg_id

        def done(result: Any, exc: BaseException | None) -> None:
            if exc is None:
                try:
                    reply = self.serializer.dumps(result)
                except Exception as e:  # an unpicklable return value is the handler's error
                    exc = e
            if exc is not None:
                body = protocol.error_body(exc, MAIN_NAME, "".join(traceback.format_exception(exc)), from_handler=True)
                send = lambda: self._send_to(name, Kind.ERROR, msg_id, "", [protocol.encode_body(body)], origin="")
            else:
                send = lambda: self._send_to(name, Kind.REPLY, msg_id, "", reply, origin="")
            self._stats["requests_served"] += 1
            if self._loop.in_loop:
                send()
            else:
                self._loop.call_soon(send)

        def run() -> None:
            try:
                args = self.serializer.loads(payload)
            except Exception as e:
                done(None, e)
                return
            call_handler(self._dispatch, handler, (event, args), done)

        if inline:
            run()
        else:
            self._dispatch.submit(run)

    def _on_message_kind(self, name: str, msg: protocol.Message) -> None:
        if msg.header.target:
            self._route(name, msg)
        else:
            self._reject("malformed", f"one-way message to main from {name!r}")

    def _route(self, source: str, msg: protocol.Message) -> None:
        """Forward a window's MESSAGE or REQUEST to its target window, payload untouched."""
        h = msg.header
        if h.target not in self._windows:
            self._send_error(source, h.msg_id, WindowNotFound(h.target))
            return
        if h.kind == Kind.MESSAGE:
            if self._send_to(h.target, Kind.MESSAGE, 0, h.channel, msg.payload, origin=source):
                self._stats["messages_routed"] += 1
                self._send_to(source, Kind.ACK, h.msg_id, "", (), origin="")
            else:
                self._send_error(source, h.msg_id, WindowNotFound(h.target))
            return
        msg_id = next(self._ids)
        self._routes[msg_id] = _Route(source, h.msg_id, h.target, h.kind)
        if self._send_to(h.target, Kind.REQUEST, msg_id, h.channel, msg.payload, origin=source):
            self._stats["messages_routed"] += 1
        else:
            del self._routes[msg_id]
            self._send_error(source, h.msg_id, WindowNotFound(h.target))

    def _on_reply(self, name: str, msg: protocol.Message) -> None:
        h = msg.header
        route = self._routes.get(h.msg_id)
        if route is not None and route.target == name:
            del self._routes[h.msg_id]
            self._send_to(route.source, h.kind, route.source_msg_id, "", msg.payload, origin=name)
            return
        pending = self._pending.get(h.msg_id)
        if pending is None or pending.target != name:
            self._reject("unexpected_reply", f"{h.kind.name} {h.msg_id} from {name!r}")
            return
        del self._pending[h.msg_id]
        try:
            if h.kind == Kind.REPLY:
                pending.future.set_result(self.serializer.loads(msg.payload))
            else:
                pending.future.set_exception(protocol.error_from_body(protocol.decode_body(msg.payload)))
        except Exception as e:
            fail(pending.future, e)

    def _on_bye(self, name: str, msg: protocol.Message) -> None:
        self._drop_window(name, "closed")

    def _on_ping(self, name: str, msg: protocol.Message) -> None:
        self._send_to(name, Kind.PONG, msg.header.msg_id, "", (), origin="")

    def _on_pong(self, name: str, msg: protocol.Message) -> None:
        pass  # any verified traffic is a sign of life; nothing else to do

    _KIND_HANDLERS: Mapping[Kind, Callable[["Main", str, protocol.Message], None]] = {
        Kind.REQUEST: _on_request,
        Kind.MESSAGE: _on_message_kind,
        Kind.REPLY: _on_reply,
        Kind.ERROR: _on_reply,
        Kind.BYE: _on_bye,
        Kind.PING: _on_ping,
        Kind.PONG: _on_pong,
    }

    def _expire(self, msg_id: int, timeout: float) -> None:
        pending = self._pending.pop(msg_id, None)
        if pending is not None:
            fail(pending.future, Timeout(f"{pending.future.description}: no answer within {timeout} s"))

    # --- sending (I/O thread) ---------------------------------------------------

    def _send_to(self, name: str, kind: Kind, msg_id: int, channel: str, payload: Any, *, origin: str) -> bool:
        """Sign and send to registered window ``name``; False if it cannot be reached."""
        window = self._windows.get(name)
        if window is None:
            return False
        header = Header(kind, msg_id, next(self._seq), self.session, window.session, origin, name, channel)
        frames = protocol.pack(self._signer, header, payload)
        if self._raw_send(name.encode(), frames):
            return True
        self._drop_window(name, "unreachable")
        return False

    def _send_error(self, name: str, msg_id: int, exc: BaseException) -> None:
        self._send_to(name, Kind.ERROR, msg_id, "", [protocol.encode_body(protocol.error_body(exc, MAIN_NAME))], origin="")

    def _raw_reply_error(self, ident: bytes, h: Header, exc: BaseException) -> None:
        header = Header(Kind.ERROR, h.msg_id, next(self._seq), self.session, h.session, "", h.source)
        body = protocol.encode_body(protocol.error_body(exc, MAIN_NAME))
        self._raw_send(ident, protocol.pack(self._signer, header, [body]))

    def _raw_send(self, ident: bytes, frames: list[Any]) -> bool:
        try:
            self._router.send_multipart([ident, *frames], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                self._stats["unroutable"] += 1
                return False
            if e.errno == zmq.EAGAIN:
                # The peer's queue is full: count it, never drop silently.
                self._stats["dropped_hwm"] += 1
                log.warning("main: send queue to %r is full; message dropped", ident)
                return False
            raise
        self._stats["messages_out"] += 1
        return True


# ---------------------------------------------------------------------------- helpers


def _looks_like_hello(frames: list[Any]) -> bool:
    try:
        return protocol.Header.decode(frames[1]).kind == Kind.HELLO
    except (Rejected, IndexError):
        return False


def _reservation_ttl(hello: dict[str, Any]) -> float:
    """How long a name stays reserved for a window between HELLO and REGISTER."""
    timeout = hello.get("timeout", 10.0)
    if not isinstance(timeout, (int, float)) or not timeout > 0:
        raise Rejected("malformed", "HELLO timeout is not a positive number")
    return min(float(timeout), 60.0) + 1.0


def _decode_ident(ident: bytes) -> str:
    try:
        return ident.decode()
    except UnicodeDecodeError:
        raise Rejected("malformed", "routing id is not UTF-8") from None


def _peer_address(frame: zmq.Frame) -> str:
    try:
        return frame.get("Peer-Address")
    except zmq.ZMQError:  # not every transport knows one
        return ""


def _bindable(endpoint: str) -> str:
    if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
        return endpoint[:-2] + ":*"
    return endpoint


def _default_pub_endpoint(router_endpoint: str) -> str:
    transport, _, address = router_endpoint.partition("://")
    if transport == "tcp":
        return f"tcp://{address.rsplit(':', 1)[0]}:*"
    if transport == "ipc":
        return router_endpoint + ".pub"
    if transport == "inproc":
        return router_endpoint + "-pub"
    raise ValueError(f"unsupported transport in {router_endpoint!r}; use tcp://, ipc:// or inproc://")

