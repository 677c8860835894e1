"""Window: a node that joins a main, with a DEALER to its ROUTER and a SUB to its PUB.

``Window`` is the public face; the work is done by parts with one job each:

- ``WindowSession`` (``zprokit.session``): the rules: the handshake's
  answer, what the main may send, broadcast numbers, liveness, backoff. No I/O.
- ``Link``: the handshake, the DEALER, liveness and reconnecting, with its
  ``Subscriber`` (the SUB).
- ``Inbox``: what reaches the callbacks, on a small pool, never on the I/O
  thread (so a callback may send requests and wait on them); one-way
  messages of one channel one after another, in the order sent.

See docs/architecture.md for the threads.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from typing import Any, Callable, Iterable, cast, overload

import zmq

from . import _env, protocol
from ._callbacks import DEFAULT_CHANNEL, F, Listeners, registrar
from ._common import (
    DEFAULT_TIMEOUT,
    check_channel,
    check_count,
    check_endpoint,
    check_forked,
    check_group,
    check_interval,
    check_liveness,
    check_retries,
    check_timeout,
    check_window_groups,
    closed_by_failure,
    fork_generation,
    short,
)
from ._dispatch import Dispatcher
from ._requests import PendingRequests, ReplyFuture
from ._inbox import Inbox
from ._window_calls import WindowCalls
from ._link import Link
from ._loop import IOLoop
from ._stats import WINDOW_COUNTERS, WindowStats
from ._streams import DEFAULT_PREFETCH, ReplyStream
from .errors import Closed, Timeout
from .protocol import Kind, check_window_name, normalize_name
from .security import REJECTION_REASONS, CurveClient, resolve_key
from .serializers import Serializer, get_serializer
from .session import WindowSession

log = logging.getLogger(__name__)

__all__ = ["Window"]


class Window:
    """A window's node: connects, handshakes, and returns only when both channels are live.

    Parameters: ``name`` (else ``ZPROKIT_NAME``), ``endpoint``, the main's
    ROUTER endpoint (else ``ZPROKIT_ENDPOINT``), ``key`` (else ``key_file``,
    else ``ZPROKIT_KEY``, else ``ZPROKIT_KEY_FILE``; with CURVE and none of
    them, derived from ``curve_server_key`` as the main does),
    ``curve_secret_key`` and ``curve_server_key`` (the main's public key)
    for CURVE (else ``ZPROKIT_CURVE_SECRET_KEY`` and
    ``ZPROKIT_CURVE_SERVER_KEY``; ``curve_public_key`` is derived, or
    checked if given), ``timeout`` for the handshake, ``request_timeout`` the
    default for requests, ``workers`` the callback pool's size,
    ``serializer`` (must match the main's), ``exit_with_main`` (default True):
    close this window when the main says goodbye (a deliberate ``close()``;
    ``close_reason`` says so; a main that vanishes without a goodbye is
    reconnected to either way), False to keep reconnecting after a goodbye too;
    ``max_queued`` (default 1000): how many one-way messages, broadcasts
    and calls (each) may wait for this window's callbacks. The main is
    told, and holds back or refuses (``QueueFull``) one-way messages past
    it; broadcasts past it stay unread in ZeroMQ's queue, so the main's
    ``broadcast()`` waits; calls past it are answered with ``QueueFull``.
    So a slow window's memory stays bounded and its senders are told.
    ``ready`` (default True): False makes the main's ``wait_for_window`` wait
    until this window calls ``ready()``, or first waits in ``wait_closed()``
    (``create_window``'s windows do this, so their target's callbacks are
    registered before the main sends them anything);
    ``max_payload``: the largest message (in bytes on the wire) this window
    reads; the main is told in the handshake and refuses larger ones with
    ``MessageTooLarge`` before sending. The main's own limit comes back the
    same way: a request or message over it fails at once with
    ``MessageTooLarge``, never with a timeout. ``groups``: the worker groups
    this window joins (names: non-empty, no NUL, at most 255 bytes of UTF-8;
    at most 64), for the main's ``call_any`` and ``call_all`` and other
    windows' ``render_call_any``; ``WindowInfo.groups`` shows them. Timeouts may be ``None`` or
    ``math.inf`` (no limit); ``heartbeat`` and ``liveness`` must be finite.

    Liveness: the window pings the main whenever it has been quiet for
    ``heartbeat`` seconds and declares it lost after ``heartbeat * liveness``
    seconds without a word. Then every pending request fails with
    ``PeerLost`` and, with ``reconnect=True`` (the default), the window
    handshakes again with jittered exponential backoff (capped at
    ``max_backoff`` s), under its name and with its listeners, until it is
    back, closed, or ``give_up_after`` seconds have passed (``None``: never);
    giving up closes the window, and ``close_reason`` says why.

    Raises ``AuthenticationError`` (the main could not verify us, or we it:
    a wrong key; or its CURVE allow-list does not admit our key under this
    name), ``NameInUse``, ``Timeout`` (no answer in ``timeout`` s),
    ``ProtocolError`` (e.g. a serializer mismatch) or ``ValueError`` (no key,
    no name).
    """

    def __init__(
        self,
        name: str | None = None,
        endpoint: str | None = None,
        *,
        key: bytes | str | None = None,
        timeout: float = 10.0,
        request_timeout: float = DEFAULT_TIMEOUT,
        workers: int = 4,
        serializer: str | Serializer | None = None,
        exit_with_main: bool = True,
        heartbeat: float = 1.0,
        liveness: int = 3,
        reconnect: bool = True,
        max_backoff: float = 5.0,
        give_up_after: float | None = None,
        linger: float = 1.0,
        context: zmq.Context[Any] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        curve_secret_key: bytes | str | None = None,
        curve_public_key: bytes | str | None = None,
        curve_server_key: bytes | str | None = None,
        max_payload: int | None = None,
        ready: bool = True,
        max_queued: int = 1000,
        groups: Iterable[str] = (),
    ) -> None:
        name = normalize_name(name or os.environ.get(_env.NAME))
        endpoint = endpoint or os.environ.get(_env.ENDPOINT)
        if not name or not isinstance(name, str):
            raise ValueError(f"a window needs a name: pass name=... or set {_env.NAME}")
        problem = check_window_name(name)
        if problem:
            raise ValueError(f"{problem}: {short(name)}")
        self.max_payload: int | None = check_count(max_payload, "max_payload", "bytes", optional=True)
        self.max_queued: int = check_count(max_queued, "max_queued", "messages")
        self.groups: tuple[str, ...] = check_window_groups(groups)
        if not endpoint:
            raise ValueError(f"a window needs the main's endpoint: pass endpoint=... or set {_env.ENDPOINT}")
        self.name = name
        self.endpoint = check_endpoint(endpoint, bind=False)
        curve = CurveClient.create(curve_secret_key, curve_public_key, curve_server_key)
        self.key = resolve_key(key, key_file=key_file, role="window", curve_server_key=curve.server_key if curve else None)
        self.timeout = check_timeout(timeout)
        self.request_timeout = check_timeout(request_timeout, "request_timeout")
        self.serializer = get_serializer(serializer)
        self.exit_with_main = exit_with_main
        self.heartbeat, self.liveness = check_liveness(heartbeat, liveness)
        self.reconnect = reconnect
        self.max_backoff = check_interval(max_backoff, "max_backoff")
        self.give_up_after = None if give_up_after is None else check_timeout(give_up_after, "give_up_after")
        self.close_reason: BaseException | None = None
        self._is_ready = ready  # its callbacks are registered (see ready())
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._linger_ms = int(linger * 1000)
        self._from_main = Listeners()
        self._from_render = Listeners()
        self._broadcast = Listeners()
        self._joined = threading.Event()  # the first handshake ended: registered, or failed
        self._handshake_error: BaseException | None = None
        self._closed = False
        self._closed_event = threading.Event()
        self._close_lock = threading.Lock()
        self._shut = False  # close() has run (or runs)
        self._born, self._pid = fork_generation(), os.getpid()
        # Each key is counted by one thread at a time: the DEALER's reader (the I/O thread, or a
        # caller: one at a time, see SharedSocket.rx), a sender under the DEALER's lock, or the
        # pool under the inbox's lock. `+=` is a read then a write: never two threads on one key.
        self._stats: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()

        self._session = WindowSession(name, self.heartbeat, self.liveness, self.max_backoff, self.give_up_after)
        self._dispatch = Dispatcher(f"zprokit-{name}", workers)
        self._loop = IOLoop(f"zprokit-{name}-io")
        self._pending = PendingRequests(self._loop, lambda msg_id, target: self._calls.on_expired(msg_id, target))
        self._inbox = Inbox(name, self._dispatch, self._loop, self.serializer, self._session, max_queued=self.max_queued,
                            stats=self._stats, from_main=self._from_main, from_render=self._from_render,
                            broadcasts=self._broadcast)
        self._link = Link(self, self._ctx, self._loop, protocol.Signer(self.key), self._session, self._inbox,
                          self._pending, curve=curve, linger_ms=self._linger_ms, stats=self._stats,
                          rejected=self._rejected)
        self._inbox.link = self._link
        self._calls = WindowCalls(self._link, self._session, self._pending, self.serializer, self.request_timeout,
                                  self._check_open)
        self._loop.start(on_stop=self._close_sockets, on_fail=self._on_loop_failed)
        self._loop.call_soon(self._link.start_handshake)
        self._loop.call_soon(lambda: self._loop.call_later(self.heartbeat, self._link.tick))
        if not self._joined.wait(min(self.timeout + 1.0, threading.TIMEOUT_MAX)) and self._handshake_error is None:
            self._handshake_error = Timeout(f"no answer from the main at {endpoint} within {timeout} s")
        if self._handshake_error is not None:
            error = self._handshake_error
            self.close()
            raise error
        log.info("window %r connected to %s", name, endpoint)

    # ------------------------------------------------------------------ listeners

    @overload
    def on_msg_from_main(self, cb: F, channel: str = ...) -> F: ...

    @overload
    def on_msg_from_main(self, cb: str | None = ..., channel: str = ...) -> Callable[[F], F]: ...

    def on_msg_from_main(self, cb: Any = None, channel: str = DEFAULT_CHANNEL) -> Any:
        """Call ``cb(event, args)`` for messages from the main on ``channel``.

        Any number of callbacks per channel receive one-way messages; a
        ``main_call_render`` is answered by the one registered first. Works
        bare, called, or as ``@window.on_msg_from_main(channel="c")``. Returns ``cb``.
        """
        return registrar(self._add(self._from_main), cb, {"channel": channel})

    def off_msg_from_main(self, cb: Callable[..., Any], channel: str | None = None) -> bool:
        """Stop calling ``cb`` (on ``channel`` only, if given); True if it was registered."""
        return self._from_main.remove(cb, channel)

    @overload
    def on_render_msg_to_render(self, cb: F, channel: str = ...) -> F: ...

    @overload
    def on_render_msg_to_render(self, cb: str | None = ..., channel: str = ...) -> Callable[[F], F]: ...

    def on_render_msg_to_render(self, cb: Any = None, channel: str = DEFAULT_CHANNEL) -> Any:
        """Call ``cb(event, args)`` for messages from other windows; ``event.sender`` names the source."""
        return registrar(self._add(self._from_render), cb, {"channel": channel})

    def off_render_msg_to_render(self, cb: Callable[..., Any], channel: str | None = None) -> bool:
        return self._from_render.remove(cb, channel)

    @overload
    def on_broadcast(self, cb: F, *, topic: str = ...) -> F: ...

    @overload
    def on_broadcast(self, cb: str | None = ..., *, topic: str = ...) -> Callable[[F], F]: ...

    def on_broadcast(self, cb: Any = None, *, topic: str = "") -> Any:
        """Call ``cb(event, msg)`` for broadcasts whose topic starts with ``topic`` (``""``: all)."""
        return registrar(self._add(self._broadcast, key="topic"), cb, {"topic": topic})

    def off_broadcast(self, cb: Callable[..., Any], topic: str | None = None) -> bool:
        return self._broadcast.remove(cb, topic)

    @staticmethod
    def _add(listeners: Listeners, key: str = "channel") -> Callable[..., None]:
        def add(cb: Callable[..., Any], **kw: str) -> None:
            check_channel(kw[key], key)
            listeners.add(kw[key], cb)

        return add

    # ------------------------------------------------------------------ sending

    def render_msg_to_main(
        self, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None
    ) -> ReplyFuture[Any]:
        """Ask the main's handler on ``channel``; the future resolves to its return value.

        The future raises ``NoHandler`` (at once, when the main has no handler),
        ``RemoteError``, ``Timeout`` (after ``timeout`` s, default
        ``request_timeout``), ``PeerLost`` or ``Closed``.
        """
        return self._calls.request(Kind.REQUEST, "", channel, msg, timeout, f"render_msg_to_main(channel={channel!r})")

    def render_msg_to_render(
        self, name: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None
    ) -> ReplyFuture[None]:
        """Send ``msg`` one-way to window ``name`` through the main.

        The future resolves to ``None`` once the main has routed it to a live
        window, or raises ``WindowNotFound``: an unknown target is never
        dropped silently.
        """
        name = _check_target(name)
        return self._calls.request(Kind.MESSAGE, name, channel, msg, timeout, f"render_msg_to_render({name!r})")

    def render_call_render(
        self, name: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None
    ) -> ReplyFuture[Any]:
        """Ask window ``name``; resolves to the return value of its first ``on_render_msg_to_render`` callback."""
        name = _check_target(name)
        return self._calls.request(Kind.REQUEST, name, channel, msg, timeout, f"render_call_render({name!r})")

    def render_stream_from_main(
        self, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> ReplyStream[Any]:
        """Call the main's streaming handler on ``channel`` (a generator function, sync or async):
        a ``ReplyStream`` of what it yields, at most ``prefetch`` items ahead of what this side
        has taken. ``timeout`` (default ``request_timeout``) bounds the wait for each item."""
        return self._calls.stream("", channel, msg, timeout, prefetch, f"render_stream_from_main(channel={channel!r})")

    def render_stream_from_render(
        self, name: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> ReplyStream[Any]:
        """``render_stream_from_main``, from window ``name``'s streaming ``on_render_msg_to_render``
        callback, through the main."""
        name = _check_target(name)
        return self._calls.stream(name, channel, msg, timeout, prefetch, f"render_stream_from_render({name!r})")

    def render_call_any(
        self, group: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None, retries: int = 0
    ) -> ReplyFuture[Any]:
        """Ask one member of worker group ``group`` through the main, as its ``call_any`` picks one
        (the least loaded); if it leaves first, another, up to ``retries`` times, within the one
        ``timeout``. ``WindowNotFound`` (through the future) if the group has no live member."""
        group = check_group(group)
        return self._calls.request(Kind.REQUEST, group, channel, msg, timeout, f"render_call_any({group!r})",
                             count=check_retries(retries), flags=protocol.FLAG_GROUP)

    # electron-prokit's newer names
    def send_msg_to_main(
        self, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None
    ) -> ReplyFuture[Any]:
        """``render_msg_to_main`` under electron-prokit's newer name."""
        return self.render_msg_to_main(msg, channel=channel, timeout=timeout)

    def send_msg_to_other_render(
        self, name: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None
    ) -> ReplyFuture[None]:
        """``render_msg_to_render`` under electron-prokit's newer name."""
        return self.render_msg_to_render(name, msg, channel=channel, timeout=timeout)

    @overload
    def on_msg_from_other_render(self, cb: F, channel: str = ...) -> F: ...

    @overload
    def on_msg_from_other_render(self, cb: str | None = ..., channel: str = ...) -> Callable[[F], F]: ...

    def on_msg_from_other_render(self, cb: Any = None, channel: str = DEFAULT_CHANNEL) -> Any:
        """``on_render_msg_to_render`` under electron-prokit's newer name."""
        return self.on_render_msg_to_render(cb, channel)

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def session(self) -> bytes:
        """This window's session id: random, new with every handshake."""
        return self._session.session

    @property
    def connected(self) -> bool:
        """True while registered with a live main."""
        return self._session.connected and not self._closed

    def stats(self) -> WindowStats:
        """Counters (keys: ``WindowStats``)."""
        stats: dict[str, Any] = dict.fromkeys(WINDOW_COUNTERS, 0)
        stats.update(self._stats)
        rejected = self._rejected.copy()
        sub = self._link.sub  # counted apart, on the I/O thread: see Subscriber
        for key, count in dict(sub.stats).items():  # dict(...) copies in one step: the loop counts on
            stats[key] = stats.get(key, 0) + count
        rejected.update(dict(sub.rejected))
        stats["pending_requests"] = len(self._pending)  # calls awaiting an answer
        stats["requests_queued"], stats["requests_running"] = self._inbox.calls()  # calls to us
        stats["handoffs"] = self._loop.leadership.takeovers
        stats["messages_queued"] = self._inbox.oneway_backlog  # one-way messages waiting for callbacks
        stats["broadcasts_queued"] = self._inbox.broadcast_backlog  # broadcasts waiting for callbacks
        stats["rejected"] = {**dict.fromkeys(REJECTION_REASONS, 0), **rejected}
        return cast(WindowStats, stats)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until this window is closed (by ``close()``, the main's ``destroy_window``,
        or, with ``exit_with_main``, the main's goodbye). True if it closed in time.

        Waiting here means the window's callbacks are in place: it calls ``ready()`` first."""
        self._check_fork()
        self.ready()
        return self._closed_event.wait(None if timeout is None or timeout >= threading.TIMEOUT_MAX else timeout)

    def ready(self) -> None:
        """Tell the main this window's callbacks are registered: its ``wait_for_window`` returns.
        Idempotent; only needed for a window made with ``ready=False`` (as ``create_window``'s are)."""
        self._check_fork()
        if self._is_ready:
            return
        self._is_ready = True
        self._link.send(Kind.READY, 0, "", "", ())  # if not connected now, REGISTERED sends it

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Tell the main goodbye, flush what was sent, stop every thread. Idempotent."""
        with self._close_lock:
            if self._shut:
                return
            self._shut = self._closed = True
        if fork_generation() != self._born:  # a forked child: the sockets and threads are the parent's
            self._closed_event.set()
            return
        if self._loop.alive:
            self._loop.call_soon(self._link.say_goodbye)
        stopped = self._loop.stop()
        self._dispatch.close()
        if self._own_context and stopped:
            self._ctx.term()
        self._closed_event.set()
        log.info("window %r closed", self.name)

    def __enter__(self) -> "Window":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<zprokit.Window {self.name!r} -> {self.endpoint}{' closed' if self._closed else ''}>"

    def _check_fork(self) -> None:
        """``Closed`` in a child forked after this window was made: its sockets are the parent's."""
        check_forked(self._born, f"window {self.name!r}", self._pid)

    def _check_open(self) -> None:
        self._check_fork()
        if self._closed:
            reason = self.close_reason
            raise Closed(f"window {self.name!r} is closed{f': {reason!r}' if reason else ''}") from reason

    # --- what the link tells (I/O thread; _link.Link is this class's friend) ------------

    def _handshake_failed(self, error: BaseException) -> None:
        """The first handshake failed: the constructor raises ``error``."""
        self._handshake_error = error
        self._joined.set()

    def _registered(self) -> None:
        if self._joined.is_set():
            log.warning("window %r: reconnected to the main at %s", self.name, self.endpoint)
        self._joined.set()

    def _close_in_background(self, reason: BaseException | None) -> None:
        """Close from a thread of its own (the I/O thread cannot join itself); ``reason``: why."""
        if self.close_reason is None:
            self.close_reason = reason
        threading.Thread(target=self.close, name=f"zprokit-{self.name}-close", daemon=True).start()

    def _on_loop_failed(self, exc: BaseException) -> None:
        """The I/O thread failed (on it): the window becomes closed, never half-alive."""
        with self._close_lock:
            self._closed = True
            if self.close_reason is None:
                self.close_reason = exc
        self._session.connected = False
        failed = f"window {self.name!r}'s I/O thread failed"
        self._pending.fail_all(lambda future: closed_by_failure(f"{future.description}: {failed}", exc))
        if not self._joined.is_set():  # the constructor waits: it raises this
            self._handshake_failed(closed_by_failure(f"the handshake: {failed}", exc))
        threading.Thread(target=self.close, name=f"zprokit-{self.name}-close", daemon=True).start()

    def _close_sockets(self) -> None:
        self._pending.fail_all(lambda future: Closed(f"window {self.name!r} was closed with the request pending"))
        self._link.end_streams(lambda stream: Closed(f"{stream.description}: window {self.name!r} was closed"))
        self._inbox.drop_calls()  # its callbacks are told (a producer waiting for credit stops)
        self._link.drop_sockets(self._linger_ms)


def _check_target(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"target window name must be a non-empty str, got {short(name)}")
    return normalize_name(name)
