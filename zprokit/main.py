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
2. the window connects its DEALER under the routing id ``name\0nonce`` (the
   ROUTER has ``ROUTER_HANDOVER``, so a half-open old connection cannot block
   it; and since handover gives a routing id to whoever claims it last, the
   nonce is what keeps a stranger from claiming the window's route) and its
   SUB, subscribes to a control topic that names the nonce, and sends
   REGISTER with the nonce;
3. the main registers the window and answers REGISTERED once the XPUB has
   seen the control subscription too, so both channels are live when
   ``init_expose_in_main_world`` returns.

Under CURVE, each step also checks the ZAP User-Id (the name the window's key
is listed for) against the name claimed: in HELLO, then in the routing id.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import logging
import math
import os
import secrets
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, cast, overload

import zmq
from zmq.utils.monitor import parse_monitor_message

from . import protocol
from ._callbacks import DEFAULT_CHANNEL, F, Listeners, registrar
from ._common import (
    DEFAULT_TIMEOUT,
    MAIN_NAME,
    MAX_WAIT,
    PendingRequests,
    QueuedCall,
    check_channel,
    check_count,
    check_endpoint,
    check_forked,
    check_liveness,
    check_timeout,
    closed_by_failure,
    fail,
    fork_generation,
    short,
)
from ._dispatch import Dispatcher, call_handler
from ._futures import ReplyFuture
from ._loop import IOLoop, SharedSocket
from ._stats import MainStats
from .errors import Closed, MessageTooLarge, QueueFull, NoHandler, PeerLost, Timeout, WindowNotFound
from .events import Event, WindowInfo
from .protocol import Header, Kind, Rejected
from ._ratelimit import RateLimitedLog
from .security import (
    REJECTION_REASONS,
    CurveServer,
    PUB_DOMAIN,
    ZapHandler,
    check_window_name,
    subscriber_token,
    normalize_name,
    resolve_key,
    user_id,
)
from .serializers import Serializer, get_serializer

if TYPE_CHECKING:
    from .spawn import WindowProcess

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
    # Its DEALER's routing id, b"name\0nonce": the nonce (from WELCOME) keeps anyone who can
    # merely connect from taking the window's route over (ROUTER_HANDOVER gives a routing id
    # to whoever claims it last).
    ident: bytes = b""
    max_size: int | None = None  # the largest message it reads (its max_payload, from HELLO)
    fd: int | None = None  # the descriptor of its connection, so a hang-up names it (see _on_monitor)
    # Flow control of one-way messages (under Main._credit_lock): the window reads at most
    # `credit` (its max_queued; None: it did not say) that it has not handled yet; routed ones
    # past that wait here, at most as many again, their ACKs held back, so senders slow down.
    credit: int | None = None
    in_flight: int = 0
    waiting: collections.deque[tuple[str, protocol.Message]] | None = None  # made when first needed (memory)


@dataclass
class _Reservation:
    nonce: str
    expires: float
    hello: dict[str, Any]


@dataclass
class _Route:
    """A request forwarded window -> window: whom to answer, under which id."""

    source: str
    source_msg_id: int
    target: str


class Main:
    """The main process's node. See the module docstring for how it works.

    Parameters: ``endpoint`` to bind the ROUTER (``tcp://127.0.0.1:0`` picks a
    free port; ``main.endpoint`` tells the bound one); ``key`` (bytes or str),
    else ``key_file`` (a file only its owner can read), else ``ZPROKIT_KEY``,
    else ``ZPROKIT_KEY_FILE``, else (with CURVE) derived from the CURVE key,
    else random, loopback and ipc only;
    ``pub_endpoint`` for the broadcast socket (default: same host, any port);
    ``request_timeout``, the default timeout of requests in seconds; ``workers``, the handler pool's
    size; ``max_queued`` (default 1000), how many windows' calls may wait for
    the pool: past it a call is answered at once with ``QueueFull``, so a
    burst never piles up unbounded (calls whose callers gave up meanwhile are
    dropped unrun, see ``CANCEL``); ``serializer`` (``"pickle"`` or ``"json"``); ``context``, a ``zmq.Context`` to
    use instead of a private one.

    Limits: ``max_payload``, the largest message (all its frames, so the
    serialized payload plus about 100 bytes) the main reads; a bigger one is
    dropped unread, unverified, and counted in ``stats()["rejected"]["oversized"]``.
    ``max_message_size`` sets ZeroMQ's ``MAXMSGSIZE`` on both sockets (and
    caps the same total): libzmq closes a connection that sends a larger
    frame before any of it reaches Python, so that shows only as a
    ``stats()["disconnects"]``, and the peer's ZeroMQ reconnects.

    CURVE: ``curve_secret_key`` (this main's, z85 or 32 bytes;
    ``curve_public_key`` is derived, or checked if given) and ``curve_allow``,
    ``{window name: public key}``: both sockets become CURVE servers, only
    listed keys get in (a ZAP handler on this main's context, served from its
    I/O thread), and each key only as its own window name. See SECURITY.md.

    Liveness: windows ping the main when they have been quiet for a
    ``heartbeat`` (the main answers on its I/O thread, whatever its handlers
    are doing); a window not heard from for ``heartbeat * liveness``
    seconds leaves the registry, and everything pending on it fails with
    ``PeerLost``. Pass the same ``heartbeat`` and ``liveness`` to the windows.

    Raises ``ValueError`` for a non-loopback bind without a key, and
    ``OSError`` when the endpoint cannot be bound (in use, no such address).
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        key: bytes | str | None = None,
        pub_endpoint: str | None = None,
        request_timeout: float = DEFAULT_TIMEOUT,
        workers: int = 8,
        max_queued: int = 1000,
        serializer: str | Serializer | None = None,
        max_message_size: int | None = None,
        heartbeat: float = 1.0,
        liveness: int = 3,
        linger: float = 1.0,
        context: zmq.Context[Any] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        max_payload: int | None = None,
        curve_secret_key: bytes | str | None = None,
        curve_public_key: bytes | str | None = None,
        curve_allow: Mapping[str, bytes | str] | None = None,
    ) -> None:
        endpoint = check_endpoint(endpoint or os.environ.get("ZPROKIT_ENDPOINT") or DEFAULT_ENDPOINT, bind=True)
        if pub_endpoint is not None:
            pub_endpoint = check_endpoint(pub_endpoint, bind=True)
        self._curve: CurveServer | None = None
        if curve_secret_key is not None:
            self._curve = CurveServer.create(curve_secret_key, curve_public_key, curve_allow)
        elif curve_allow is not None or curve_public_key is not None:
            raise ValueError("CURVE needs curve_secret_key, the main's secret key (make a pair with `zprokit keygen --curve`)")
        self.curve_public_key: bytes | None = self._curve.public_key if self._curve else None
        check_count(max_payload, "max_payload", "bytes", optional=True)
        check_count(max_message_size, "max_message_size", "bytes", optional=True)
        self.max_payload = max_payload
        self._max_size = min((n for n in (max_payload, max_message_size) if n is not None), default=None)
        self.heartbeat, self.liveness = check_liveness(heartbeat, liveness)
        self.key = resolve_key(key, key_file=key_file, endpoint=endpoint, role="main", curve_server_key=self.curve_public_key)
        self.request_timeout = check_timeout(request_timeout, "request_timeout")
        self.max_queued: int = check_count(max_queued, "max_queued", "calls")
        self.serializer = get_serializer(serializer)
        self.max_message_size = max_message_size
        self.session = secrets.token_bytes(protocol.SESSION_SIZE)
        self._signer = protocol.Signer(self.key)
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._linger_ms = int(linger * 1000)

        self._router = self._ctx.socket(zmq.ROUTER)
        self._pub = self._ctx.socket(zmq.XPUB)
        self._zap: ZapHandler | None = None
        self._pub_auth = False  # the PUB port admits only registered windows' SUBs (PLAIN, see security)
        try:
            if self._curve is not None:
                # Bound before the sockets: with no ZAP handler, libzmq lets every CURVE client in.
                self._zap = ZapHandler(self._ctx, self._curve.names, self._on_zap_denied)
                self._zap.start()
            else:
                # Without CURVE, strangers are still kept off the PUB port: a window's SUB presents
                # a password only its handshake gave it, checked by ZAP before any subscription.
                zap = ZapHandler(self._ctx, {}, self._on_zap_denied, self._on_subscriber_denied)
                try:
                    zap.start()
                except ValueError as e:  # a context shared with another main: it has the ZAP endpoint
                    log.warning("main: the broadcast port admits any subscriber: %s", e)
                else:
                    self._zap, self._pub_auth = zap, True
                    self._pub.setsockopt(zmq.PLAIN_SERVER, 1)
                    self._pub.setsockopt(zmq.ZAP_DOMAIN, PUB_DOMAIN.encode())
            # Broadcasts are never dropped at the high-water mark: broadcast() waits for room and
            # tells its caller (QueueFull) when there is none. A window's host that vanished
            # without a word would hold its queue full until TCP gave up, for ever with the
            # defaults: keepalives and a retransmission limit end such a connection within
            # about a liveness period (see _tcp_limits).
            self._pub.setsockopt(zmq.XPUB_NODROP, 1)
            for option, value in _tcp_limits(self.heartbeat, self.liveness):
                self._pub.setsockopt(option, value)
            for sock in (self._router, self._pub):
                sock.setsockopt(zmq.LINGER, self._linger_ms)
                if max_message_size is not None:
                    sock.setsockopt(zmq.MAXMSGSIZE, max_message_size)
                if self._curve is not None:
                    self._curve.apply(sock)
            self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self._router.setsockopt(zmq.ROUTER_HANDOVER, 1)
            self._router.bind(_bindable(endpoint))
            self.endpoint: str = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
            self._pub.bind(_bindable(pub_endpoint or _default_pub_endpoint(self.endpoint)))
            self.pub_endpoint: str = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        except Exception as e:
            self._router.close(0)
            self._pub.close(0)
            if self._zap is not None:
                self._zap.stop()
            if self._own_context:
                self._ctx.term()
            if isinstance(e, zmq.ZMQError):  # no zmq exception escapes: a bind that failed is an OSError
                raise OSError(e.errno, f"cannot bind {short(endpoint)}: {e.strerror}") from e
            raise

        # I/O-thread state
        self._windows: dict[str, _Window] = {}  # registered: both channels live
        self._joining: dict[str, _Window] = {}  # REGISTER seen, XPUB subscription not yet
        self._contests: dict[str, tuple[bytes, protocol.Message, float]] = {}
        self._reservations: dict[str, _Reservation] = {}
        self._subscriptions: set[bytes] = set()
        self._awaiting_sub: dict[bytes, str] = {}
        self._routes: dict[int, _Route] = {}  # window -> window requests in flight, by our msg_id
        self._route_ids: dict[tuple[str, int], int] = {}  # (source, its msg_id) -> our msg_id
        # Requests of windows waiting in the pool, so a caller that gives up (CANCEL) stops them
        # before they start; gone once they start (loop adds and cancels, a worker pops).
        self._serving: dict[tuple[str, int], QueuedCall] = {}
        self._backlog = 0  # calls handed to the pool and not yet taken by a thread (cancelled ones too)
        self._backlog_lock = threading.Lock()
        self._guard = protocol.ReplayGuard()
        self._seq = itertools.count(1)
        self._bseq = 1  # the next broadcast's number (under the PUB socket's lock)
        self._stats_pub: Counter[str] = Counter()  # counted under the PUB socket's lock
        self._ids = itertools.count(1)
        self._stats: Counter[str] = Counter()  # counted on the loop thread, or under the router's lock
        self._batching = False  # the loop is working through a batch of messages (see _answer)
        self._replies: list[tuple[_Window, int, Any]] = []  # inline handlers' replies, until the batch ends
        self._routes_due: list[tuple[str, protocol.Message]] = []  # window -> window, until the batch ends
        self._broadcasts = 0  # counted under the PUB socket's lock
        self._rejected: Counter[str] = Counter()
        self._warn = RateLimitedLog(log)
        self._sweep_due = False
        self._by_fd: dict[int, str] = {}  # registered windows by their connection's descriptor
        self._capped: dict[str, _Window] = {}  # registered windows that announced a max_payload
        self._credit_lock = threading.Lock()  # every _Window's credit, in_flight and waiting
        self._credit_freed = threading.Condition(self._credit_lock)  # a CREDIT came, or a window left

        # user-facing state, shared
        self._handlers: dict[str, tuple[Callable[..., Any], bool]] = {}
        self._connected_cbs = Listeners()
        self._disconnected_cbs = Listeners()
        self._window_waiters: dict[str, list[threading.Event]] = {}
        self._processes: list[Any] = []
        self._closed = False
        self._shut = False  # close() has run (or runs): threads stopped, context ended
        self._close_lock = threading.Lock()
        self.close_reason: BaseException | None = None  # why the main closed, if not by close()
        self._born, self._pid = fork_generation(), os.getpid()

        # Built-in channels for the command-line tools; answered inline, they never wait.
        self._handlers[SYSTEM_PREFIX + "ping"] = (lambda event, args: args, True)
        self._handlers[SYSTEM_PREFIX + "windows"] = (lambda event, args: self._describe_windows(), True)

        self._dispatch = Dispatcher(f"zprokit-main-{os.getpid()}", workers)
        self._loop = IOLoop(f"zprokit-main-io-{os.getpid()}")
        self._pending = PendingRequests(self._loop, self._on_expired)
        # Any thread sends (numbering and signing under the socket's lock); the loop reads.
        self._router_s = SharedSocket(self._router, self._loop)
        self._pub_s = SharedSocket(self._pub, self._loop)
        self._loop.add_shared(self._router_s, self._on_message, self._end_batch)
        self._loop.add_shared(self._pub_s, self._on_xpub)
        # A closed connection (a window that crashed, on this host or another) shows up
        # here at once; heartbeats are only needed for links that die without a word.
        self._monitor = self._router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._loop.add_socket(self._monitor, self._on_monitor)
        # Subscribers the PUB port turned away (no window's password, or none at all): counted.
        self._pub_monitor: zmq.Socket[Any] | None = None
        if self._pub_auth:
            self._pub_monitor = self._pub.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
            self._loop.add_socket(self._pub_monitor, self._on_pub_monitor)
        if self._zap is not None:
            self._loop.add_socket(self._zap.zap_socket, self._zap.on_readable)
        self._loop.start(on_stop=self._close_sockets, on_fail=self._on_loop_failed)
        self._loop.call_soon(lambda: self._loop.call_later(self.heartbeat, self._check_liveness))
        self._loop.call_soon(self._publish_heartbeat)
        log.info("main listening on %s (broadcasts on %s)", self.endpoint, self.pub_endpoint)

    # ------------------------------------------------------------------ handlers

    @overload
    def on_msg_from_render(
        self, handler: F, channel: str = ..., *, replace: bool = ..., inline: bool = ...
    ) -> F: ...

    @overload
    def on_msg_from_render(
        self, handler: str | None = ..., channel: str = ..., *, replace: bool = ..., inline: bool = ...
    ) -> Callable[[F], F]: ...

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

    def main_msg_to_render(
        self, name: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None
    ) -> None:
        """Send ``msg`` one-way to window ``name``'s ``on_msg_from_main`` callbacks.

        Raises ``WindowNotFound`` at once if no window of that name is
        connected, ``Closed`` after ``close()``. Backpressure: a window holds
        at most its ``max_queued`` one-way messages unhandled; past that this
        waits for it to catch up, at most ``timeout`` s (default
        ``request_timeout``), then raises ``QueueFull`` (nothing sent).
        """
        self._check_open()
        check_channel(channel)
        name = normalize_name(name)
        window = self._windows.get(name)
        if window is None:
            raise WindowNotFound(name)
        payload = self.serializer.dumps(msg)
        self._check_size(window, payload, channel)
        limit = self.request_timeout if timeout is None else check_timeout(timeout)
        if self._loop.in_loop:  # an inline handler: waiting here would stall the very loop that frees room
            limit = 0.0
        with self._credit_freed:
            deadline = math.inf
            while window.credit is not None and (window.waiting or window.in_flight >= window.credit):
                if self._windows.get(name) is not window:
                    raise WindowNotFound(name)
                now = time.monotonic()
                deadline = min(deadline, now + limit)
                if now >= deadline:
                    with self._router_s.lock:
                        self._stats["dropped_hwm"] += 1
                    raise QueueFull(name, f"window {name!r} has had {window.in_flight} one-way messages unhandled "
                                          f"(its max_queued) for {limit} s; nothing was sent")
                self._credit_freed.wait(min(deadline - now, MAX_WAIT))
            if window.credit is not None:
                window.in_flight += 1
        try:
            sent = self._send_to(name, Kind.MESSAGE, 0, channel, payload, origin="", raise_full=True)
        except BaseException:
            self._return_credit(window, 1)
            raise
        if not sent:
            raise WindowNotFound(name)

    def send_msg_to_render(
        self, name: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None
    ) -> None:
        """``main_msg_to_render`` under electron-prokit's newer name."""
        self.main_msg_to_render(name, msg, channel=channel, timeout=timeout)

    def main_call_render(
        self, name: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None
    ) -> ReplyFuture[Any]:
        """Ask window ``name``; the future resolves to the return value of its first callback on ``channel``.

        The future raises ``WindowNotFound``, ``NoHandler``, ``RemoteError``,
        ``PeerLost`` (the window left), ``Timeout`` (after ``timeout`` s,
        default ``request_timeout``) or ``Closed``. ``WindowNotFound`` is raised
        at once when the name is unknown.
        """
        self._check_open()
        check_channel(channel)
        name = normalize_name(name)
        window = self._windows.get(name)
        if window is None:
            raise WindowNotFound(name)
        timeout = self.request_timeout if timeout is None else check_timeout(timeout)
        payload = self.serializer.dumps(msg)
        self._check_size(window, payload, channel)
        future: ReplyFuture[Any] = ReplyFuture(f"main_call_render({name!r}, channel={channel!r})")
        future.set_running_or_notify_cancel()
        msg_id = next(self._ids)
        self._pending.add(msg_id, future, timeout, target=name)
        try:
            sent = self._send_to(name, Kind.REQUEST, msg_id, channel, payload, origin="", raise_full=True)
        except BaseException:  # QueueFull, or anything else: no entry is left behind
            self._pending.pop(msg_id)
            raise
        if not sent:
            self._pending.pop(msg_id)
            raise WindowNotFound(name)
        return future

    def _check_size(self, window: _Window, payload: Any, channel: str, origin: str = "") -> None:
        """Raise ``MessageTooLarge`` if ``payload`` is over what ``window`` announced it reads."""
        if window.max_size is not None:
            size = protocol.wire_size(payload, origin, window.info.name, channel)
            if size > window.max_size:
                raise MessageTooLarge(size, window.max_size, window.info.name)

    def broadcast(self, msg: Any, *, topic: str = "", timeout: float | None = None) -> None:
        """Publish ``msg`` to every window whose ``on_broadcast`` topic is a prefix of ``topic``.

        Raises ``MessageTooLarge`` at once if ``msg`` is over the ``max_payload``
        that a connected window announced. Nothing is dropped: a window that does not keep up holds broadcasts back
        (the PUB socket is ``XPUB_NODROP``), so this waits until every
        subscribed window's queue has room, at most ``timeout`` s (default
        ``request_timeout``), then raises ``QueueFull`` (counted in
        ``stats()["broadcasts_refused"]``; nothing was sent). Raises
        ``Closed`` after ``close()``.
        """
        self._check_open()
        check_channel(topic, what="topic")
        limit = self.request_timeout if timeout is None else check_timeout(timeout)
        if self._loop.in_loop:  # an inline handler: never hold the I/O thread
            limit = 0.0
        payload = self.serializer.dumps(msg)
        if self._capped:  # a window that announced a smaller limit would drop it: refused here, told
            smallest = min(list(self._capped.values()), key=lambda w: cast(int, w.max_size))
            self._check_size(smallest, payload, topic)
        wire_topic = protocol.BROADCAST_PREFIX + topic.encode()
        pub = self._pub_s
        deadline = math.inf
        while True:
            with pub.lock:
                header = Header(Kind.BROADCAST, 0, self._bseq, self.session, protocol.NO_SESSION, "", "", topic)
                frames = protocol.pack(self._signer, header, payload, topic=wire_topic)
                try:
                    pub.send_locked(frames)
                except zmq.Again:
                    pass  # a subscriber's queue is full: wait for room, below
                except zmq.ZMQError as e:
                    raise Closed("this main is closed") from e
                else:
                    self._bseq += 1  # numbered only once sent: the numbers a window sees have no gaps
                    self._broadcasts += 1
                    return
            now = time.monotonic()
            if deadline == math.inf:
                deadline = now + limit
            if now >= deadline:
                with pub.lock:
                    self._stats_pub["broadcasts_refused"] += 1
                raise QueueFull("a window", f"a window has not read broadcasts for {limit} s: its queue is full; "
                                            f"nothing was sent (broadcast(timeout=...) waits longer)")
            # The socket's descriptor signals when its state may have changed (a queue drained);
            # a short cap covers a signal the I/O thread consumed first.
            pub.wait_ready(min(deadline - now, 0.01))

    # ------------------------------------------------------------------ registry

    def get_window(self, name: str) -> WindowInfo | None:
        """The ``WindowInfo`` of connected window ``name``, or ``None``."""
        w = self._windows.get(normalize_name(name))
        return w.info if w else None

    def has_window(self, name: str) -> bool:
        return normalize_name(name) in self._windows

    def get_all_windows(self) -> list[WindowInfo]:
        """Every connected window, in the order they registered."""
        return [w.info for w in list(self._windows.values())]

    def wait_for_window(self, name: str, timeout: float | None = 10.0) -> WindowInfo:
        """Block until window ``name`` is connected and ready; raises ``Timeout`` after ``timeout`` s.

        Ready: a window made by ``create_window`` is ready once its target has
        registered its callbacks (it waits in ``wait_closed()``, calls
        ``window.ready()``, or returns), so what is sent after this returns
        finds them. Any other window is ready when it connects.
        """
        name = normalize_name(name)
        event = threading.Event()
        self._window_waiters.setdefault(name, []).append(event)
        deadline = time.monotonic() + (math.inf if timeout is None else timeout)
        try:
            while True:
                self._check_open()
                info = self.get_window(name)
                if info is not None and info.ready:
                    return info
                left = deadline - time.monotonic()
                if left <= 0:
                    state = "did not connect" if info is None else (
                        "connected but did not get ready (its target has neither waited in "
                        "window.wait_closed() nor called window.ready())")
                    raise Timeout(f"window {name!r} {state} within {timeout} s")
                event.wait(min(left, MAX_WAIT))
                event.clear()
        finally:
            waiters = self._window_waiters.get(name, [])
            if event in waiters:
                waiters.remove(event)

    def destroy_window(self, name: str, *, grace: float = 3.0) -> bool:
        """Ask window ``name`` to close; end its process after ``grace`` s if this main created it.

        Returns True if a connected window or a created process had that name.
        """
        self._check_open()
        name = normalize_name(name)
        found = False
        if name in self._windows:
            found = True
            self._send_to(name, Kind.CLOSE, 0, "", (), origin="")
        for proc in [p for p in self._processes if p.name == name]:
            found = True
            threading.Thread(target=proc.stop, args=(grace,), name=f"zprokit-destroy-{name}", daemon=True).start()
        return found

    def _allow_curve_key(self, name: str, public_key: bytes) -> None:
        """Admit ``public_key`` as window ``name`` (create_window's key for its child)."""
        assert self._zap is not None
        self._zap.allow_key(name, public_key)  # one dict store: safe beside the I/O thread's reads

    def create_window(self, name: str, target: Any, **options: Any) -> WindowProcess:
        """Start a window process on this machine; see ``zprokit.spawn.create_window``."""
        from .spawn import create_window

        self._check_open()
        handle = create_window(self, name, target, **options)
        self._processes.append(handle)
        return handle

    def stats(self) -> MainStats:
        """Counters: messages in and out, requests served, windows, rejections by reason (keys: ``MainStats``)."""
        stats: dict[str, Any] = {
            "messages_in": 0,
            "messages_out": 0,
            "requests_served": 0,
            "messages_routed": 0,
            "unhandled": 0,
            "disconnects": 0,  # connections closed: windows leaving, strangers, a frame over max_message_size
            "dropped_hwm": 0,  # sends refused because the peer's queue was full (QueueFull)
            "broadcasts_refused": 0,
            "refused_busy": 0,  # calls answered QueueFull: max_queued calls waited for the pool already
            "cancelled_before_start": 0,
            "late_answers": 0,  # handlers' answers whose caller had left (or restarted): not sent
        }
        stats.update(self._stats)
        stats["broadcasts"] = self._broadcasts
        stats.update(self._stats_pub)
        stats["messages_out"] += self._broadcasts
        stats["windows"] = len(self._windows)
        stats["pending_requests"] = len(self._pending)  # main_call_render calls awaiting an answer
        stats["pending_routes"] = len(self._routes)  # window -> window requests being carried
        stats["requests_queued"] = len(self._serving)  # windows' requests waiting for the pool, to be run
        stats["rejected"] = {**dict.fromkeys(REJECTION_REASONS, 0), **self._rejected}
        return cast(MainStats, stats)

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
        """Say goodbye to every window, end created processes, stop the threads. Idempotent.

        In a child forked after this main was made, it only marks the main closed here:
        the sockets, threads and processes are the parent's.
        """
        with self._close_lock:
            if self._shut:
                return
            self._shut = self._closed = True
        if fork_generation() != self._born:
            return
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
        check_forked(self._born, "this main", self._pid)
        if self._closed:
            reason = self.close_reason
            raise Closed(f"this main is closed{f': {reason!r}' if reason else ''}") from reason

    def _on_loop_failed(self, exc: BaseException) -> None:
        """The I/O thread failed (on it): the main becomes closed, never half-alive."""
        with self._close_lock:
            self._closed = True
            if self.close_reason is None:
                self.close_reason = exc

        self._pending.fail_all(lambda future: closed_by_failure(f"{future.description}: the main's I/O thread failed", exc))
        # The rest of close() (the pool, created processes, the context) from a thread of its own.
        threading.Thread(target=self.close, name="zprokit-main-close", daemon=True).start()

    # ================================================================== I/O thread

    def _say_goodbye(self) -> None:
        for name in list(self._windows):
            self._send_to(name, Kind.BYE, 0, "", (), origin="")
        self._pending.fail_all(_closed_error)

    def _close_sockets(self) -> None:
        self._pending.fail_all(_closed_error)
        # A closed main has no windows: its registry says so (and wait_for_window raises Closed).
        self._windows.clear()
        self._joining.clear()
        self._capped.clear()
        for waiters in list(self._window_waiters.values()):
            for event in waiters:
                event.set()
        with self._router_s.lock:
            self._router.disable_monitor()
        self._monitor.close(0)
        if self._pub_monitor is not None:
            with self._pub_s.lock:
                self._pub.disable_monitor()
            self._pub_monitor.close(0)
        self._router_s.close(self._linger_ms)
        self._pub_s.close(self._linger_ms)
        if self._zap is not None:
            self._zap.stop()

    def _reject(self, reason: str, detail: Any = "", raw: list[Any] | None = None) -> None:
        self._rejected[reason] += 1
        peer = _PeerAddress(raw[-1] if raw else None)  # looked up only if the line is written
        if reason in REJECTION_REASONS:  # a sign of an attack or a misconfigured peer: say so, but not per message
            self._warn.warning(reason, "main dropped a message from %s (%s): %s", peer, reason, detail)
        else:
            log.debug("main dropped a message from %s: %s %s", peer, reason, detail)

    def _on_subscriber_denied(self, name: str) -> None:
        log.debug("main: the broadcast port refused a subscriber calling itself %s", short(name))

    def _on_pub_monitor(self) -> None:
        assert self._pub_monitor is not None
        while True:
            try:
                self._pub_monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._reject("unauthenticated", "a subscriber to the broadcast port without a window's password")

    def _on_zap_denied(self, key: bytes) -> None:
        self._reject("unauthenticated", f"a CURVE key not on the allow-list ({key.decode()})")

    def _on_monitor(self) -> None:
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
            self._stats["disconnects"] += 1
            name = self._by_fd.get(int(event["value"]))
            if name is not None:
                self._loop.call_later(0.05, functools.partial(self._check_reachable, name))
            elif not self._sweep_due and any(w.fd is None for w in self._windows.values()):
                self._sweep_due = True
                self._loop.call_later(max(0.05, self.heartbeat), self._sweep)

    def _check_reachable(self, name: str) -> None:
        self._send_to(name, Kind.PING, 0, "", (), origin="")

    def _sweep(self) -> None:
        self._sweep_due = False
        for name in [n for n, w in self._windows.items() if w.fd is None]:
            self._send_to(name, Kind.PING, 0, "", (), origin="")

    def _on_xpub(self, frames: list[Any]) -> None:
        event = frames[0]  # bytes: the one frame of a subscription event
        if not event:
            return
        topic = event[1:]
        if event[0] == 1:
            name = self._awaiting_sub.pop(topic, None)
            if name is not None and name in self._joining:
                self._complete_registration(name)
            elif self._is_reserved_topic(topic):
                # Only the control topics of handshakes under way: anyone can subscribe to anything.
                self._subscriptions.add(topic)
        elif event[0] == 0:
            self._subscriptions.discard(topic)

    def _on_message(self, raw: list[Any]) -> None:
        self._batching = True  # until _end_batch: see _answer
        self._stats["messages_in"] += 1
        try:
            if len(raw) == 2 and self._curve is None:
                # One frame, the common case: verified and split without building objects,
                # and a request for one of our handlers served straight from the fields.
                try:
                    fields = protocol.unpack_one(self._signer, raw[1].buffer, self._max_size)
                except Rejected:
                    fields = None  # the general path rejects it, and counts and answers as it does
                if fields is not None:
                    if not self._serve_fast(raw[0], fields):
                        kind, msg_id, seq, session, peer, source, target, channel, part, flags = fields
                        header = Header(kind, msg_id, seq, session, peer, source, target, channel, flags)
                        self._on_unpacked(raw, protocol.Message(header, () if part is None else (part,)))
                    return
            self._on_verified(raw)
        except Rejected as e:
            self._reject(e.reason, e, raw)

    def _serve_fast(self, ident: bytes, fields: tuple[Any, ...]) -> bool:
        """A registered window's request for one of our handlers, served in fewer steps
        than ``_on_unpacked`` takes; False (nothing done, nothing recorded) for anything
        else, which then takes the general path."""
        kind, msg_id, seq, session, peer, source, target, channel, payload, _ = fields
        if kind != Kind.REQUEST or target or payload is None or peer != self.session:
            return False
        window = self._windows.get(source)
        if window is None or window.ident != ident or session != window.session:
            return False
        entry = self._handlers.get(channel)
        if entry is None or not self._guard.accept(source, session, seq):
            return False
        window.last_seen = time.monotonic()
        window.messages += 1
        self._serve(source, entry[0], entry[1], channel, msg_id, (payload,))
        return True

    def _on_verified(self, raw: list[Any]) -> None:  # raw[0]: the routing id (bytes), then zmq.Frames
        if len(raw) < 2:
            raise Rejected("malformed", "no frames")
        frames = [f.buffer for f in raw[1:]]
        try:
            msg = protocol.unpack(self._signer, frames, max_size=self._max_size)
        except Rejected as e:
            if e.reason == "bad_signature" and _looks_like_hello(frames):
                # Probably a window with the wrong key, handshaking: tell it plainly, unsigned.
                self._raw_send(raw[0], protocol.DENIAL)
            raise
        self._on_unpacked(raw, msg)

    def _on_unpacked(self, raw: list[Any], msg: protocol.Message) -> None:
        """A verified message: check who sent it, then hand it to its kind's handler."""
        ident = raw[0]  # bytes; the rest are zmq.Frames (the last one carries the metadata)
        h = msg.header
        if h.kind == Kind.HELLO:
            if not self._guard.first_hello(h.session):  # every handshake has a new session
                raise Rejected("replay", "a HELLO seen before")
            if self._curve is not None and not self._hello_authenticated(ident, msg, user_id(raw[-1])):
                return
            self._on_hello(ident, msg)
            return
        if self._curve is not None:
            # The name a message claims is its routing id's; CURVE's User-Id says whose key sent it.
            who = user_id(raw[-1])
            if who is None or ident.partition(b"\0")[0] != who.encode():
                raise Rejected("unauthenticated", f"routing id {ident[:64]!r} from a CURVE key allowed as {who!r}")
        if h.peer_session != self.session:
            self._reject("stale_session", h.kind, raw)
            if h.kind in (Kind.REQUEST, Kind.PING) or (h.kind == Kind.MESSAGE and h.target):
                # A window of an earlier main (or that we forgot): tell it, so it does not wait.
                self._raw_reply_error(ident, h, PeerLost("the main does not know this window; re-register"))
            return
        name = _decode_ident(ident)
        if h.kind == Kind.REGISTER:
            self._on_register(name, msg, _peer_address(raw[-1]), ident, _source_fd(raw[-1]))
            return
        window = self._windows.get(name)
        if window is None or window.session != h.session or h.source != name or window.ident != ident:
            self._reject("unregistered", name, raw)
            if h.kind in (Kind.PING, Kind.REQUEST, Kind.MESSAGE) and (window is None or window.ident != ident):
                # A window we dropped (silent too long: a partition, a freeze) that still talks to
                # us on our session: tell it, so it rejoins now, not after its own liveness timeout.
                self._raw_reply_error(ident, h, PeerLost("the main had dropped this window"), rejoin=True)
            return
        if not self._guard.accept(name, h.session, h.seq):
            self._reject("replay", name, raw)
            return
        window.last_seen = time.monotonic()
        window.messages += 1
        handler = self._KIND_HANDLERS.get(h.kind)
        if handler is None:
            self._reject("malformed", f"unexpected {h.kind.name} from {name}", raw)
            return
        handler(self, name, msg)

    # --- handshake ------------------------------------------------------------

    def _on_hello(self, ident: bytes, msg: protocol.Message, holder_answered: bool = False) -> None:
        h = msg.header
        body = protocol.decode_body(msg.payload)
        name = normalize_name(body.get("name"))
        _int_field(body, "pid")  # checked now: a bad one must not fail later, in REGISTER
        _size_field(body, "max_payload")
        now = time.monotonic()

        def refuse(reason: str, message: str) -> None:
            self._rejected[f"refused_{reason}"] += 1
            self._refuse(ident, h, reason, message)

        problem = check_window_name(name)
        if problem:
            refuse("bad_name", f"{problem}: {name!r}")
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
        nonce = secrets.token_hex(16)  # also the secret half of the window's routing id
        self._reservations[name] = _Reservation(nonce, now + _reservation_ttl(body), body)
        welcome = Header(Kind.WELCOME, h.msg_id, 0, self.session, h.session, MAIN_NAME, name)
        # max_payload: the largest message we read, so the window refuses a larger one before
        # sending it (with an error that says so) instead of waiting out its timeout.
        reply_body = {"nonce": nonce, "pub": self.pub_endpoint, "serializer": self.serializer.name,
                      "max_payload": self._max_size, "pub_auth": "plain" if self._pub_auth else None}
        if self._pub_auth:
            assert self._zap is not None
            self._zap.allow_subscriber(name, subscriber_token(self.key, name, nonce))
        self._sign_and_send(ident, welcome, [protocol.encode_body(reply_body)])

    def _settle_contest(self, name: str) -> None:
        ident, hello, started = self._contests.pop(name)
        holder = self._windows.get(name)
        answered = holder is not None and holder.last_seen >= started
        if holder is not None and not answered:
            self._drop_window(name, f"did not answer a ping within {self.heartbeat} s")
        # A holder that answered keeps its name; without the flag a holder quiet for more than
        # heartbeat/2 since its pong would be pinged again, and again, until the newcomer timed out.
        self._on_hello(ident, hello, holder_answered=answered)

    def _refuse(self, ident: bytes, h: Header, reason: str, message: str) -> None:
        body = protocol.encode_body({"reason": reason, "message": message})
        self._sign_and_send(ident, Header(Kind.REFUSE, h.msg_id, 0, self.session, h.session), [body])

    def _hello_authenticated(self, ident: bytes, msg: protocol.Message, who: str | None) -> bool:
        """Under CURVE: a HELLO may only ask for the name its key is listed for."""
        name = normalize_name(protocol.decode_body(msg.payload).get("name"))
        if who is not None and name == who:
            return True
        self._reject("unauthenticated", f"HELLO for {name!r} from a CURVE key allowed as {who!r}")
        self._refuse(ident, msg.header, "unauthenticated", f"this CURVE key is on the allow-list as {who!r}, not {name!r}")
        return False

    def _is_reserved_topic(self, topic: bytes) -> bool:
        name, _, nonce = topic[len(protocol.CONTROL_PREFIX):].partition(b"\0")
        held = self._reservations.get(name.decode(errors="replace"))
        return topic.startswith(protocol.CONTROL_PREFIX) and held is not None and held.nonce.encode() == nonce

    def _on_register(self, name: str, msg: protocol.Message, address: str, ident: bytes, fd: int | None) -> None:
        h = msg.header
        body = protocol.decode_body(msg.payload)
        held = self._reservations.get(name)
        if held is None or held.nonce != body.get("nonce") or h.source != name or ident != f"{name}\0{held.nonce}".encode():
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
            pid=_int_field(hello, "pid"),
            connected_since=time.time(),
            address=address,
            serializer=self.serializer.name,
            session=h.session.hex(),
            ready=hello.get("ready", True) is not False,
        )
        self._joining[name] = _Window(info, h.session, time.monotonic(), ident=ident,
                                      max_size=_size_field(hello, "max_payload"), fd=fd,
                                      credit=_size_field(hello, "max_queued"))
        topic = protocol.CONTROL_PREFIX + f"{name}\0{held.nonce}".encode()
        if topic in self._subscriptions:
            self._complete_registration(name)
        else:
            self._awaiting_sub[topic] = name

    def _complete_registration(self, name: str) -> None:
        window = self._joining.pop(name)
        self._windows[name] = window
        if window.fd is not None:
            self._by_fd[window.fd] = name
        if window.max_size is not None:
            self._capped[name] = window
        self._send_to(name, Kind.REGISTERED, 0, "", (), origin="")
        log.info("window %r connected (host %s, pid %s)", name, window.info.host, window.info.pid)
        for event in self._window_waiters.get(name, ()):
            event.set()
        for cb in self._connected_cbs.get(None):
            # (the cast: mypy cannot infer a lambda with a default argument as a Callable[[], None])
            self._dispatch.submit(cast(Callable[[], None], lambda cb=cb: cb(window.info)), lane="presence")

    def _check_liveness(self) -> None:
        """Heartbeat tick: windows not heard from for ``heartbeat * liveness`` s leave."""
        if self._closed:
            return
        self._loop.call_later(self.heartbeat / 4, self._check_liveness)  # lost within a quarter beat of the limit
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
            if name not in self._windows and name not in self._joining:
                self._forget_subscriber(name, self._reservations[name].nonce)
            del self._reservations[name]

    def _forget_subscriber(self, name: str, nonce: str) -> None:
        if self._pub_auth and self._zap is not None:
            self._zap.forget_subscriber(name, subscriber_token(self.key, name, nonce))

    def _publish_heartbeat(self) -> None:
        """Every heartbeat, a PING on the PUB (topic ``H``), numbered with the broadcasts: the
        broadcast link is watched too, and a window whose SUB connection died silently (a
        firewall, a NAT) hears nothing for a while, and dials again (see ``Window._tick``)."""
        if self._closed:
            return
        self._loop.call_later(self.heartbeat, self._publish_heartbeat)
        with self._pub_s.lock:
            header = Header(Kind.PING, 0, self._bseq, self.session, protocol.NO_SESSION)
            try:
                self._pub_s.send_locked(protocol.pack(self._signer, header, (), topic=protocol.HEARTBEAT_TOPIC))
            except zmq.ZMQError:  # a full subscriber queue: a window that is busy reading is not deaf
                return
            self._bseq += 1

    def _drop_window(self, name: str, reason: str) -> None:
        """Remove ``name`` from the registry, failing everything pending on it."""
        window = self._windows.pop(name, None)
        if window is None:
            return
        if window.fd is not None and self._by_fd.get(window.fd) == name:
            del self._by_fd[window.fd]
        self._capped.pop(name, None)
        self._forget_subscriber(name, window.ident.partition(b"\0")[2].decode(errors="replace"))
        self._guard.forget(name)
        for topic in [t for t, n in self._awaiting_sub.items() if n == name]:
            del self._awaiting_sub[topic]
        lost = PeerLost(f"window {name!r} left ({reason}) with the request pending")
        self._pending.fail_all(lambda future: lost, target=name)
        for msg_id, route in list(self._routes.items()):
            if route.target == name:
                self._pop_route(msg_id)
                self._send_error(route.source, route.source_msg_id, lost)
            elif route.source == name:
                self._pop_route(msg_id)
        for key in [k for k in self._serving if k[0] == name]:  # nobody to answer: do not start them
            self._serving.pop(key).cancelled = True
        with self._credit_freed:
            held, window.waiting = list(window.waiting or ()), None
            self._credit_freed.notify_all()  # a sender waiting for its room learns it is gone
        for source, msg in held:  # routed one-way messages that waited for room: their senders are told
            self._send_error(source, msg.header.msg_id, lost)
        log.info("window %r disconnected (%s)", name, reason)
        for cb in self._disconnected_cbs.get(None):
            self._dispatch.submit(cast(Callable[[], None], lambda cb=cb: cb(window.info)), lane="presence")

    # --- messages from registered windows ------------------------------------

    def _on_request(self, name: str, msg: protocol.Message) -> None:
        h = msg.header
        if h.target:
            self._route_soon(name, msg)
            return
        entry = self._handlers.get(h.channel)
        if entry is None:
            self._send_error(name, h.msg_id, NoHandler(h.channel, MAIN_NAME))
            return
        handler, inline = entry
        self._serve(name, handler, inline, h.channel, h.msg_id, msg.payload)

    def _serve(
        self, name: str, handler: Callable[..., Any], inline: bool, channel: str, msg_id: int, payload: Any
    ) -> None:
        """Run ``handler`` for request ``msg_id`` of window ``name`` and answer it: here, on the
        I/O thread, if ``inline``; otherwise on the pool, which answers from there."""
        if not inline:
            # Bounded by what waits in the pool, cancelled calls included (they leave when a
            # thread takes them): the caller is told, nothing piles up.
            if self._backlog >= self.max_queued:
                self._stats["refused_busy"] += 1
                self._send_error(name, msg_id, QueueFull(MAIN_NAME, f"the main has {self._backlog} calls waiting "
                                                                    "for its handlers (its max_queued): try again later"))
                return
            serving = self._serving[(name, msg_id)] = QueuedCall()
            with self._backlog_lock:
                self._backlog += 1
            self._dispatch.submit(functools.partial(self._serve_queued, serving, name, handler, channel, msg_id, payload))
            return
        done = self._answerer(name, msg_id)
        try:
            args = self.serializer.loads(payload)
        except Exception as e:
            done(None, e)
            return
        call_handler(self._dispatch, handler, (Event(name, channel, "request", None, MAIN_NAME), args), done)

    def _serve_queued(
        self, serving: QueuedCall, name: str, handler: Callable[..., Any], channel: str, msg_id: int, payload: Any
    ) -> None:
        """``_serve`` on the pool, unless the caller gave up while the request waited (CANCEL)."""
        self._serving.pop((name, msg_id), None)  # one step: the loop may pop it for a CANCEL meanwhile
        with self._backlog_lock:
            self._backlog -= 1
        if serving.cancelled:
            with self._router_s.lock:  # the counters are the loop's and the senders' (see _sign_and_send)
                self._stats["cancelled_before_start"] += 1
            return
        self._serve(name, handler, True, channel, msg_id, payload)

    def _answerer(self, name: str, msg_id: int) -> Callable[[Any, BaseException | None], None]:
        """The ``done(result, exc)`` that answers request ``msg_id`` of window ``name``.

        Only the window that asked: one that restarted under the same name meanwhile
        numbers its calls afresh, and must never get another incarnation's answer."""
        asker = self._windows.get(name)

        def done(result: Any, exc: BaseException | None) -> None:
            if asker is None or self._windows.get(name) is not asker:
                with self._router_s.lock:
                    self._stats["late_answers"] += 1  # its caller is gone: nobody to answer
                return
            if exc is None:
                try:
                    reply = self.serializer.dumps(result)
                    window = self._windows.get(name)
                    if window is not None:
                        self._check_size(window, reply, "")
                except Exception as e:  # an unpicklable or oversized return value is the handler's error
                    exc = e
            if exc is not None:
                self._answer_error(name, msg_id, exc)
            else:
                self._answer(name, msg_id, reply)

        return done

    def _answer_error(self, name: str, msg_id: int, exc: BaseException) -> None:
        body = protocol.error_body(exc, MAIN_NAME, "".join(traceback.format_exception(exc)), from_handler=True)
        self._send_to(name, Kind.ERROR, msg_id, "", [protocol.encode_body(body)], origin="", served=True)

    def _answer(self, name: str, msg_id: int, reply: list[Any]) -> None:
        """Send a handler's REPLY: ``_send_to`` in fewer steps for a one-frame reply, as most are.

        An inline handler's reply, made while the loop works through a batch of
        messages, leaves with the batch's other replies when the batch ends
        (``_end_batch``): a run of sends wakes libzmq's I/O thread once,
        where one send at a time woke it each time (and on 2 cores the woken
        thread preempts this one: about 40 µs a reply, measured).
        """
        window = self._windows.get(name)
        if window is not None and protocol.fits_one(reply):
            if self._batching and self._loop.in_loop:
                self._replies.append((window, msg_id, reply[0]))
                return
            if not self._send_replies([(window, msg_id, reply[0])]):
                return
        self._send_to(name, Kind.REPLY, msg_id, "", reply, origin="", served=True)

    def _end_batch(self) -> None:
        """The end of a batch: send the replies its inline handlers made, and route what
        windows sent to windows (loop thread)."""
        self._batching = False
        replies, self._replies = self._replies, []
        for window, msg_id, data in self._send_replies(replies):
            self._send_to(window.info.name, Kind.REPLY, msg_id, "", [data], origin="", served=True)
        routes, self._routes_due = self._routes_due, []
        for source, msg in routes:  # in the order they came: one-way messages keep their order
            try:
                self._route(source, msg)
            except Exception:
                log.exception("main: error routing a message from %r", source)

    def _send_replies(self, replies: list[tuple[_Window, int, Any]]) -> list[tuple[_Window, int, Any]]:
        """Number, sign and send one-frame replies under the ROUTER's lock; those that failed,
        for the general path (``_send_to``), which counts and reports each failure."""
        failed = []
        router = self._router_s
        with router.lock:
            for i, (window, msg_id, data) in enumerate(replies):
                if router.closed:
                    failed.extend(replies[i:])
                    break
                frames = protocol.pack_one(self._signer, Kind.REPLY, msg_id, next(self._seq), self.session,
                                           window.session, "", window.info.name, "", data)
                self._stats["requests_served"] += 1  # before it leaves: see _sign_and_send
                try:
                    router.send_locked([window.ident, frames[0]], check=False)
                except zmq.ZMQError:
                    self._stats["requests_served"] -= 1
                    failed.append((window, msg_id, data))
                else:
                    self._stats["messages_out"] += 1
            if replies and not router.closed:
                router.check_input_locked()
        return failed

    def _on_message_kind(self, name: str, msg: protocol.Message) -> None:
        if msg.header.target:
            self._route_soon(name, msg)
        else:
            self._reject("malformed", f"one-way message to main from {name!r}")

    def _route_soon(self, source: str, msg: protocol.Message) -> None:
        """``_route`` now, or, in a batch on the loop, when the batch ends (see ``_answer``)."""
        if self._batching and self._loop.in_loop:
            self._routes_due.append((source, msg))
        else:
            self._route(source, msg)

    def _route(self, source: str, msg: protocol.Message) -> None:
        """Forward a window's MESSAGE or REQUEST to its target window, payload untouched."""
        h = msg.header
        target = self._windows.get(normalize_name(h.target))
        if target is None:
            self._send_error(source, h.msg_id, WindowNotFound(h.target))
            return
        h.target = target.info.name
        try:
            self._check_size(target, msg.payload, h.channel, source)
        except MessageTooLarge as e:
            self._send_error(source, h.msg_id, e)
            return
        if h.kind == Kind.MESSAGE:
            with self._credit_lock:
                if target.credit is not None:
                    if target.waiting or target.in_flight >= target.credit:
                        if target.waiting is None:
                            target.waiting = collections.deque()
                        if len(target.waiting) < target.credit:  # held, its ACK with it: the sender slows down
                            target.waiting.append((source, msg))
                            return
                        self._stats["dropped_hwm"] += 1
                        self._send_error(source, h.msg_id, QueueFull(
                            h.target, f"window {h.target!r} is not keeping up: {target.in_flight} one-way messages "
                                      f"unhandled and {len(target.waiting)} more held; nothing was sent"))
                        return
                    target.in_flight += 1
            self._forward_message(target, source, msg)
            return
        msg_id = next(self._ids)
        self._routes[msg_id] = _Route(source, h.msg_id, h.target)
        self._route_ids[(source, h.msg_id)] = msg_id
        try:
            sent = self._send_to(h.target, Kind.REQUEST, msg_id, h.channel, msg.payload, origin=source, raise_full=True)
        except QueueFull as e:
            self._pop_route(msg_id)
            self._send_error(source, h.msg_id, e)
            return
        if sent:
            self._stats["messages_routed"] += 1
        else:
            self._pop_route(msg_id)
            self._send_error(source, h.msg_id, WindowNotFound(h.target))

    def _forward_message(self, target: _Window, source: str, msg: protocol.Message) -> None:
        """Send a routed one-way message on, its credit taken; ACK its sender (loop thread)."""
        h = msg.header
        try:
            sent = self._send_to(target.info.name, Kind.MESSAGE, 0, h.channel, msg.payload, origin=source,
                                 raise_full=True)
        except QueueFull as e:  # the sender's future fails with it: backpressure reaches the sender
            self._return_credit(target, 1)
            self._send_error(source, h.msg_id, e)
            return
        if sent:
            self._stats["messages_routed"] += 1
            self._send_to(source, Kind.ACK, h.msg_id, "", (), origin="")
        else:
            self._send_error(source, h.msg_id, WindowNotFound(h.target))

    def _return_credit(self, window: _Window, count: int) -> None:
        with self._credit_freed:
            window.in_flight = max(0, window.in_flight - count)
            self._credit_freed.notify_all()

    def _on_credit(self, name: str, msg: protocol.Message) -> None:
        """The window handled ``msg_id`` more one-way messages: send on what waited for room."""
        window = self._windows[name]
        released = []
        with self._credit_freed:
            window.in_flight = max(0, window.in_flight - msg.header.msg_id)
            while window.waiting and window.credit is not None and window.in_flight < window.credit:
                released.append(window.waiting.popleft())
                window.in_flight += 1
            self._credit_freed.notify_all()
        for source, held in released:  # in the order they came
            self._forward_message(window, source, held)

    def _pop_route(self, msg_id: int) -> _Route | None:
        """Forget the routed request ``msg_id`` (answered, cancelled, or an end gone)."""
        route = self._routes.pop(msg_id, None)
        if route is not None:
            self._route_ids.pop((route.source, route.source_msg_id), None)
        return route

    def _on_cancel(self, name: str, msg: protocol.Message) -> None:
        """Window ``name`` gave up on its request ``msg_id``: not started, it never will be."""
        h = msg.header
        if h.target:  # routed: forget the route, and tell the window that has it
            for i, (source, due) in enumerate(self._routes_due):  # not routed yet (same batch): never will be
                if source == name and due.header.msg_id == h.msg_id and due.header.kind == Kind.REQUEST:
                    del self._routes_due[i]
                    return
            msg_id = self._route_ids.get((name, h.msg_id))
            route = None if msg_id is None else self._pop_route(msg_id)
            if route is not None:  # so msg_id is not None
                self._send_to(route.target, Kind.CANCEL, cast(int, msg_id), "", (), origin=name)
            return
        serving = self._serving.pop((name, h.msg_id), None)
        if serving is not None:
            serving.cancelled = True

    def _on_expired(self, msg_id: int, target: str | None) -> None:
        """Our ``main_call_render`` ``msg_id`` timed out: tell the window, so it does not start it late."""
        if target is not None:
            self._send_to(target, Kind.CANCEL, msg_id, "", (), origin="")

    def _on_reply(self, name: str, msg: protocol.Message) -> None:
        h = msg.header
        route = self._routes.get(h.msg_id)
        if route is not None and route.target == name:
            self._pop_route(h.msg_id)
            source = self._windows.get(route.source)
            if source is not None and h.kind == Kind.REPLY:
                try:
                    self._check_size(source, msg.payload, "", name)
                except MessageTooLarge as e:  # the caller is told now, not by its timeout
                    self._send_error(route.source, route.source_msg_id, e)
                    return
            self._send_to(route.source, h.kind, route.source_msg_id, "", msg.payload, origin=name)
            return
        pending = self._pending.pop(h.msg_id)
        if pending is None:
            self._reject("unexpected_reply", f"{h.kind.name} {h.msg_id} from {name!r}")
            return
        future, target = pending
        if target != name:  # not the window we asked: put it back, drop this
            self._pending.add(h.msg_id, future, self.request_timeout, target)
            self._reject("unexpected_reply", f"{h.kind.name} {h.msg_id} from {name!r}")
            return
        try:
            if h.kind == Kind.REPLY:
                future.set_result(self.serializer.loads(msg.payload))
            else:
                future.set_exception(protocol.error_from_body(protocol.decode_body(msg.payload)))
        except Exception as e:
            fail(future, e)

    def _on_bye(self, name: str, msg: protocol.Message) -> None:
        self._drop_window(name, "closed")

    def _on_ready(self, name: str, msg: protocol.Message) -> None:
        window = self._windows[name]
        if not window.info.ready:
            window.info = dataclasses.replace(window.info, ready=True)
            for event in self._window_waiters.get(name, ()):
                event.set()

    def _on_unhandled(self, name: str, msg: protocol.Message) -> None:
        """A window had no callback for a one-way message: counted here, where senders look."""
        h = msg.header
        self._stats["unhandled"] += 1
        self._warn.warning("unhandled", "window %r had no callback on channel %r for a message from %s",
                           name, h.channel, h.target or MAIN_NAME)

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
        Kind.CANCEL: _on_cancel,
        Kind.READY: _on_ready,
        Kind.UNHANDLED: _on_unhandled,
        Kind.CREDIT: _on_credit,
    }

    # --- sending (any thread) ------------------------------------------------------

    def _send_to(
        self,
        name: str,
        kind: Kind,
        msg_id: int,
        channel: str,
        payload: Any,
        *,
        origin: str,
        served: bool = False,
        raise_full: bool = False,
    ) -> bool:
        """Sign and send to registered window ``name``; False if it cannot be reached (then it is dropped).

        ``served``: this is a handler's answer, counted in ``requests_served``.
        A window whose queue is full stays registered (it is alive, only
        slow): with ``raise_full`` the sender gets ``QueueFull``, otherwise
        False (the message is counted in ``dropped_hwm`` and logged).
        """
        window = self._windows.get(name)
        if window is None:
            return False
        header = Header(kind, msg_id, 0, self.session, window.session, origin, name, channel)
        try:
            if self._sign_and_send(window.ident, header, payload, served):
                return True
        except QueueFull:
            if raise_full:
                raise
            return False

        def drop() -> None:
            if self._windows.get(name) is window:
                self._drop_window(name, "unreachable")

        if self._loop.in_loop:
            drop()
        else:
            self._loop.call_soon(drop)
        return False

    def _sign_and_send(self, ident: bytes, header: Header, payload: Any, served: bool = False) -> bool:
        """Number, sign and send in one step under the ROUTER's lock, so numbers go out in order."""
        with self._router_s.lock:
            header.seq = next(self._seq)  # a fresh header per send: numbered here, in send order
            if served:  # counted before it leaves, so a caller that has its answer sees the count
                self._stats["requests_served"] += 1  # under the lock: handlers answer from many threads
            try:
                sent = self._raw_send_locked(ident, protocol.pack(self._signer, header, payload))
            except QueueFull:
                sent = False
                raise
            finally:
                if served and not sent:
                    self._stats["requests_served"] -= 1
            return sent

    def _send_error(self, name: str, msg_id: int, exc: BaseException) -> None:
        self._send_to(name, Kind.ERROR, msg_id, "", [protocol.encode_body(protocol.error_body(exc, MAIN_NAME))], origin="")

    def _raw_reply_error(self, ident: bytes, h: Header, exc: BaseException, **extra: Any) -> None:
        header = Header(Kind.ERROR, h.msg_id, 0, self.session, h.session, "", h.source)
        self._sign_and_send(ident, header, [protocol.encode_body({**protocol.error_body(exc, MAIN_NAME), **extra})])

    def _raw_send(self, ident: bytes, frames: list[Any]) -> bool:
        try:
            with self._router_s.lock:
                return self._raw_send_locked(ident, frames)
        except QueueFull:
            return False

    def _raw_send_locked(self, ident: bytes, frames: list[Any]) -> bool:
        try:
            self._router_s.send_locked([ident, *frames])
        except zmq.ZMQError as e:
            if e.errno in (zmq.EHOSTUNREACH, zmq.ENOTSOCK):
                self._stats["unroutable"] += 1
                return False
            if e.errno == zmq.EAGAIN:
                # The peer's queue is full: counted, and the sender told (QueueFull); never a silent drop.
                self._stats["dropped_hwm"] += 1
                # Rate-limited: a stranger who floods us and never reads would otherwise get a line per message.
                self._warn.warning("dropped_hwm", "main: send queue to %r is full; message not sent", ident)
                raise QueueFull(_peer_name(ident)) from e
            raise
        self._stats["messages_out"] += 1
        return True


# ---------------------------------------------------------------------------- helpers


class _PeerAddress:
    """A message's peer address for a log line, looked up when the line is written."""

    __slots__ = ("_frame",)

    def __init__(self, frame: Any) -> None:
        self._frame = frame

    def __str__(self) -> str:
        address = _peer_address(self._frame) if isinstance(self._frame, zmq.Frame) else ""
        return address or "an unknown address"


def _source_fd(frame: Any) -> int | None:
    """The descriptor of the connection a message came on (ZMQ_SRCFD), or None if not told."""
    try:
        fd = frame.get(zmq.SRCFD)
    except (zmq.ZMQError, AttributeError, TypeError, ValueError):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _peer_name(ident: bytes) -> str:
    return ident.split(b"\0", 1)[0].decode(errors="replace")


def _closed_error(future: ReplyFuture[Any]) -> BaseException:
    return Closed(f"{future.description}: the main was closed with the request pending")


def _looks_like_hello(frames: list[Any]) -> bool:
    return protocol.peek_kind(frames) == Kind.HELLO


def _int_field(body: dict[str, Any], key: str) -> int:
    value = body.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool):
        raise Rejected("malformed", f"{key} is not an integer")
    return value


def _tcp_limits(heartbeat: float, liveness: int) -> list[tuple[int, int]]:
    """TCP options that end a dead peer's connection in about ``heartbeat * liveness`` s
    (at least a few): keepalive probes while it is idle, and a limit on retransmissions
    (``TCP_USER_TIMEOUT``) while data waits for it."""
    silent = max(2, math.ceil(heartbeat * liveness))
    # Within what Linux accepts (TCP_KEEPCNT <= 127, TCP_KEEPIDLE and TCP_KEEPINTVL <= 32767 s):
    # past it libzmq fails to set up every connection, and no window could ever join.
    return [
        (zmq.TCP_KEEPALIVE, 1),
        (zmq.TCP_KEEPALIVE_IDLE, min(silent, 32767)),
        (zmq.TCP_KEEPALIVE_INTVL, min(max(1, math.ceil(heartbeat)), 32767)),
        (zmq.TCP_KEEPALIVE_CNT, min(liveness, 127)),
        (zmq.TCP_MAXRT, min(silent * 1000, 2**31 - 1)),
    ]


def _size_field(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise Rejected("malformed", f"{key} is not a positive integer")
    return value


def _reservation_ttl(hello: dict[str, Any]) -> float:
    """How long a name stays reserved for a window between HELLO and REGISTER."""
    timeout = hello.get("timeout", 10.0)
    if not isinstance(timeout, (int, float)) or not timeout > 0:
        raise Rejected("malformed", "HELLO timeout is not a positive number")
    return min(float(timeout), 60.0) + 1.0


def _decode_ident(ident: bytes) -> str:
    """The window name in a routing id (``name\\0nonce``)."""
    try:
        return ident.partition(b"\0")[0].decode()
    except UnicodeDecodeError:
        raise Rejected("malformed", "routing id is not UTF-8") from None


def _peer_address(frame: zmq.Frame) -> str:
    try:
        return cast(str, frame.get("Peer-Address"))
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

