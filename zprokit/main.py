"""Main: the node that binds the ROUTER (requests, routing by window name) and the XPUB (broadcasts).

``Main`` is the public face; the work is done by parts with one job each:

- ``MainSession`` (``zprokit.session``): the rules: handshakes, the registry,
  who may send what, liveness, calls in flight. No I/O.
- ``MainSockets``: the sockets, bound and configured.
- ``Router``: the ROUTER's traffic on the I/O thread, with ``Server``
  (requests to the main's handlers) and ``Relay`` (window -> window, and the
  credit of one-way messages).
- ``Publisher``: broadcasts and the PUB heartbeat.

Threads: callers, one I/O thread (``IOLoop``) that reads every socket, and
a pool for user handlers (``Dispatcher``). See docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, NoReturn, cast, overload

import zmq

from . import _env, protocol
from ._callbacks import DEFAULT_CHANNEL, F, registrar
from ._common import (
    DEFAULT_TIMEOUT,
    check_channel,
    check_count,
    check_endpoint,
    check_forked,
    check_liveness,
    check_timeout,
    closed_by_failure,
    fork_generation,
)
from ._dispatch import Dispatcher
from ._groups import MainCalls
from ._requests import PendingRequests, ReplyFuture
from ._loop import IOLoop, SharedSocket
from ._main_sockets import MainSockets
from ._publisher import Publisher
from ._router import Router
from ._serve import check_size
from ._presence import Presence
from ._stats import MAIN_COUNTERS, MainStats
from ._streams import DEFAULT_PREFETCH, ReplyStream, check_prefetch, is_stream_handler
from .errors import Closed, WindowNotFound
from .events import WindowInfo
from .protocol import Kind, normalize_name
from .security import REJECTION_REASONS, CurveServer, resolve_key
from .serializers import Serializer, get_serializer
from .session import MainSession, Peer

if TYPE_CHECKING:
    from .spawn import WindowProcess

log = logging.getLogger(__name__)

__all__ = ["Main"]

DEFAULT_ENDPOINT = "tcp://127.0.0.1:0"
SYSTEM_PREFIX = "zprokit."


class Main:
    """The main process's node. See the module docstring for how it is built.

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
        endpoint = check_endpoint(endpoint or os.environ.get(_env.ENDPOINT) or DEFAULT_ENDPOINT, bind=True)
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
        self.max_message_size = max_message_size
        max_size = min((n for n in (max_payload, max_message_size) if n is not None), default=None)
        self.heartbeat, self.liveness = check_liveness(heartbeat, liveness)
        self.key = resolve_key(key, key_file=key_file, endpoint=endpoint, role="main", curve_server_key=self.curve_public_key)
        self.request_timeout = check_timeout(request_timeout, "request_timeout")
        self.max_queued: int = check_count(max_queued, "max_queued", "calls")
        self.serializer = get_serializer(serializer)
        self.session = secrets.token_bytes(protocol.SESSION_SIZE)
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._linger_ms = int(linger * 1000)
        try:
            self._sockets = MainSockets(
                self._ctx, endpoint, pub_endpoint, curve=self._curve, heartbeat=self.heartbeat,
                liveness=self.liveness, linger_ms=self._linger_ms, max_message_size=max_message_size,
                key=self.key, on_key_denied=self._on_key_denied)
        except BaseException:
            if self._own_context:
                self._ctx.term()
            raise
        self.endpoint: str = self._sockets.endpoint
        self.pub_endpoint: str = self._sockets.pub_endpoint

        # user-facing state, shared
        self._handlers: dict[str, tuple[Callable[..., Any], bool, bool]] = {}  # channel: (fn, inline, streams)
        self._processes: list[WindowProcess] = []
        self._closed = False
        self._shut = False  # close() has run (or runs): threads stopped, context ended
        self._close_lock = threading.Lock()
        self.close_reason: BaseException | None = None  # why the main closed, if not by close()
        self._born, self._pid = fork_generation(), os.getpid()
        # Built-in channels for the command-line tools; answered inline, they never wait.
        self._handlers[SYSTEM_PREFIX + "ping"] = (lambda event, args: args, True, False)
        self._handlers[SYSTEM_PREFIX + "windows"] = (lambda event, args: self._session.describe(time.time()), True, False)

        signer = protocol.Signer(self.key)
        self._session = MainSession(self.session, serializer=self.serializer.name, heartbeat=self.heartbeat,
                                    liveness=self.liveness, max_size=max_size, curve=self._curve is not None)
        self._dispatch = Dispatcher(f"zprokit-main-{os.getpid()}", workers)
        self._presence = Presence(self._dispatch)
        self._loop = IOLoop(f"zprokit-main-io-{os.getpid()}")
        self._pending = PendingRequests(self._loop, lambda msg_id, target: self._calls.on_expired(msg_id, target))
        # Any thread sends (numbering and signing under the socket's lock); the loop reads.
        self._router_s = SharedSocket(self._sockets.router, self._loop)
        self._pub_s = SharedSocket(self._sockets.pub, self._loop)
        self._router = Router(
            self._router_s, self._sockets.monitor, self._loop, self._dispatch, signer, self._session, self._pending,
            self.serializer, max_size=max_size, max_queued=self.max_queued, handlers=self._handlers,
            welcome=self._sockets.welcome, forget_login=self._sockets.forget_login, on_registered=self._presence.registered,
            on_ready=self._presence.ready, on_left=self._presence.left)
        self._calls = MainCalls(self._router, self._pending, self._session, self.serializer, self.request_timeout,
                                self._check_open)
        self._publisher = Publisher(self._pub_s, self._loop, signer, self._session, self.heartbeat,
                                    self._router.registered)
        self._loop.add_shared(self._router_s, self._router.on_message, self._router.end_batch)
        self._loop.add_shared(self._pub_s, self._publisher.on_event)
        self._loop.add_socket(self._sockets.monitor, self._router.on_monitor)
        if self._sockets.pub_monitor is not None:  # subscribers the PUB port turned away: counted
            self._loop.add_socket(self._sockets.pub_monitor, functools.partial(
                self._sockets.on_pub_monitor, self._router.reject))
        if self._sockets.zap is not None:
            self._loop.add_socket(self._sockets.zap.zap_socket, self._sockets.zap.on_readable)
        self._loop.start(on_stop=self._close_sockets, on_fail=self._on_loop_failed)
        self._loop.call_soon(lambda: self._loop.call_later(self.heartbeat, self._router.tick))
        self._loop.call_soon(self._publisher.heartbeat)
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
        self._handlers[channel] = (handler, inline, is_stream_handler(handler))

    def off_msg_from_render(self, channel: str = DEFAULT_CHANNEL) -> bool:
        """Remove the handler of ``channel``; True if there was one."""
        return self._handlers.pop(channel, None) is not None

    def on_window_connected(self, cb: Callable[[WindowInfo], Any]) -> Callable[[WindowInfo], Any]:
        """Call ``cb(info)`` (off the I/O thread) whenever a window registers. Returns ``cb``."""
        self._presence.connected.add(None, cb)
        return cb

    def on_window_disconnected(self, cb: Callable[[WindowInfo], Any]) -> Callable[[WindowInfo], Any]:
        """Call ``cb(info)`` whenever a window leaves the registry. Returns ``cb``."""
        self._presence.disconnected.add(None, cb)
        return cb

    def off_window_connected(self, cb: Callable[[WindowInfo], Any]) -> bool:
        return self._presence.connected.remove(cb)

    def off_window_disconnected(self, cb: Callable[[WindowInfo], Any]) -> bool:
        return self._presence.disconnected.remove(cb)

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
        peer, payload = self._prepare(name, msg, channel)
        limit = self.request_timeout if timeout is None else check_timeout(timeout)
        if self._loop.in_loop:  # an inline handler: waiting here would stall the very loop that frees room
            limit = 0.0
        if not self._calls.message(peer, payload, channel, limit):
            self._not_found(peer.name)

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
        peer, payload = self._prepare(name, msg, channel)
        limit = self.request_timeout if timeout is None else check_timeout(timeout)
        future = self._calls.send(peer, payload, channel, limit, f"main_call_render({peer.name!r}, channel={channel!r})")
        return future if future is not None else self._not_found(peer.name)  # None: the window left just now

    def call_any(self, group: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None,
                 retries: int = 0) -> ReplyFuture[Any]:
        """Ask the member of worker group ``group`` with the fewest of this main's calls in flight
        (equals in turn); if it leaves first (``PeerLost``), another member, up to ``retries`` times,
        within the one ``timeout``. ``WindowNotFound`` at once for a group with no live member; else
        the future raises as ``main_call_render``'s. ``cancel()`` cancels the member's call."""
        return self._calls.call_any(group, msg, channel, timeout, retries)

    def call_all(self, msg: Any, *, group: str | None = None, channel: str = DEFAULT_CHANNEL,
                 timeout: float | None = None) -> ReplyFuture[dict[str, Any]]:
        """Ask every member of ``group`` now (every window for None): a future of ``{window name: its
        result, or the exception its call ended with}`` (``Timeout`` if not answered within
        ``timeout``): one failure never fails the whole; no member: ``{}``. ``cancel()`` cancels all."""
        return self._calls.call_all(group, msg, channel, timeout)

    def main_stream_from_render(
        self, name: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> ReplyStream[Any]:
        """Call window ``name``'s streaming callback on ``channel`` (a generator function, sync or
        async): a ``ReplyStream`` of what it yields, at most ``prefetch`` items ahead of what this
        side has taken. ``timeout`` (default ``request_timeout``) bounds the wait for each item.
        ``WindowNotFound`` at once when the name is unknown."""
        peer, payload = self._prepare(name, msg, channel)
        limit = self.request_timeout if timeout is None else check_timeout(timeout)
        stream = self._calls.stream(peer, payload, channel, limit, check_prefetch(prefetch),
                                    f"main_stream_from_render({peer.name!r}, channel={channel!r})")
        if stream is None:
            self._not_found(peer.name)
        return stream

    def _prepare(self, name: str, msg: Any, channel: str) -> tuple[Peer, list[Any]]:
        """Check a send to window ``name`` and serialize ``msg``: the window and the payload."""
        self._check_open()
        check_channel(channel)
        name = normalize_name(name)
        peer = self._session.windows.get(name)
        if peer is None:
            self._not_found(name)
        payload = self.serializer.dumps(msg)
        check_size(peer, payload, channel)
        return peer, payload

    def _not_found(self, name: str) -> NoReturn:
        """``WindowNotFound``, or ``Closed`` if the window is gone because this main closed."""
        self._check_open()
        raise WindowNotFound(name)

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
        capped = list(self._session.capped.values())
        if capped:  # a window that announced a smaller limit would drop it: refused here, told
            check_size(min(capped, key=lambda w: cast(int, w.max_size)), payload, topic)
        self._publisher.broadcast(payload, topic, limit)

    # ------------------------------------------------------------------ registry

    def get_window(self, name: str) -> WindowInfo | None:
        """The ``WindowInfo`` of connected window ``name``, or ``None``."""
        w = self._session.windows.get(normalize_name(name))
        return w.info if w else None

    def has_window(self, name: str) -> bool:
        return normalize_name(name) in self._session.windows

    def get_all_windows(self) -> list[WindowInfo]:
        """Every connected window, in the order they registered."""
        return [w.info for w in list(self._session.windows.values())]

    def wait_for_window(self, name: str, timeout: float | None = 10.0) -> WindowInfo:
        """Block until window ``name`` is connected and ready; raises ``Timeout`` after ``timeout`` s.

        Ready: a window made by ``create_window`` is ready once its target has
        registered its callbacks (it waits in ``wait_closed()``, calls
        ``window.ready()``, or returns), so what is sent after this returns
        finds them. Any other window is ready when it connects.
        """
        name = normalize_name(name)

        def look() -> WindowInfo | None:
            self._check_open()
            return self.get_window(name)

        return self._presence.wait(name, timeout, look)

    def destroy_window(self, name: str, *, grace: float = 3.0) -> bool:
        """Ask window ``name`` to close; end its process after ``grace`` s if this main created it.

        Returns True if a connected window or a created process had that name.
        """
        self._check_open()
        name = normalize_name(name)
        found = self._router.send_to(name, Kind.CLOSE) or name in self._session.windows
        for proc in [p for p in self._processes if p.name == name]:
            found = True
            threading.Thread(target=proc.stop, args=(grace,), name=f"zprokit-destroy-{name}", daemon=True).start()
        return found

    def create_window(self, name: str, target: Any, **options: Any) -> WindowProcess:
        """Start a window process on this machine; see ``zprokit.spawn.create_window``."""
        from .spawn import create_window

        self._check_open()
        name = normalize_name(name)
        spec = _env.ChildSpec(name=name, endpoint=self.endpoint, key=self.key, serializer=self.serializer.name,
                              heartbeat=self.heartbeat, liveness=self.liveness)
        with self._sockets.child_key(name) as curve:  # under CURVE, a keypair of its own (allow-listed)
            if curve is not None:
                spec = dataclasses.replace(spec, curve_secret_key=curve[0], curve_server_key=curve[1])
            handle = create_window(spec, target, **options)
        self._processes.append(handle)
        return handle

    def stats(self) -> MainStats:
        """Counters: messages in and out, requests served, windows, rejections by reason (keys: ``MainStats``)."""
        stats: dict[str, Any] = dict.fromkeys(MAIN_COUNTERS, 0)
        stats.update(self._router.stats)
        stats.update(self._publisher.stats)
        stats["messages_out"] += stats["broadcasts"]
        stats["windows"] = len(self._session.windows)
        stats["pending_requests"] = len(self._pending)  # main_call_render calls awaiting an answer
        stats["pending_routes"] = len(self._session.routes)  # window -> window requests being carried
        stats["requests_queued"], stats["requests_running"] = self._router.server.calls()  # windows' calls
        stats["handoffs"] = self._loop.leadership.takeovers
        stats["rejected"] = {**dict.fromkeys(REJECTION_REASONS, 0), **self._router.rejected}
        return cast(MainStats, stats)

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
        self._router.closing = True
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
        state = "closed" if self._closed else f"{len(self._session.windows)} windows"
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

    # ================================================================== on the I/O thread

    def _on_key_denied(self, key: bytes) -> None:
        self._router.reject("unauthenticated", f"a CURVE key not on the allow-list ({key.decode()})")

    def _say_goodbye(self) -> None:
        for name in list(self._session.windows):
            self._router.send_to(name, Kind.BYE)
        self._pending.fail_all(_closed_error)

    def _close_sockets(self) -> None:
        self._pending.fail_all(_closed_error)
        self._router.end_calls()  # streams end with Closed; running handlers are told (a producer stops)
        self._session.clear()  # a closed main has no windows (and wait_for_window raises Closed)
        self._router.relay.wake()  # senders waiting for a window's room see it gone
        self._presence.wake_all()
        with self._router_s.lock, self._pub_s.lock:
            self._sockets.close_monitors()
        self._router_s.close(self._linger_ms)
        self._pub_s.close(self._linger_ms)
        self._sockets.stop_zap()


def _closed_error(future: ReplyFuture[Any]) -> BaseException:
    return Closed(f"{future.description}: the main was closed with the request pending")
