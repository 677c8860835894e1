"""Window: a DEALER (routing id = its name) to the main's ROUTER, and a SUB to its PUB.

One I/O thread owns the sockets and runs the handshake (see ``zprokit.main``
for its steps); callbacks run on a small pool, never on the I/O thread, so a
callback may send requests and wait on them. One-way messages of one
channel reach their callbacks one after another, in the order sent.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import logging
import math
import os
import random
import secrets
import socket
import threading
import time
import traceback
from collections import Counter
from typing import Any, Callable, Sequence, cast, overload

import zmq

from . import protocol
from ._callbacks import DEFAULT_CHANNEL, F, Listeners, registrar
from ._dispatch import Dispatcher, call_handler
from ._futures import ReplyFuture
from ._loop import IOLoop, SharedSocket, recv_message
from ._stats import WindowStats
from .errors import (
    AuthenticationError,
    Closed,
    MessageTooLarge,
    NameInUse,
    NoHandler,
    PeerLost,
    ProtocolError,
    QueueFull,
    Timeout,
)
from .events import Event
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
    check_interval,
    check_liveness,
    check_timeout,
    closed_by_failure,
    fail,
    fork_generation,
    short,
)
from .protocol import Header, Kind, Rejected
from ._ratelimit import RateLimitedLog
from .security import (
    REJECTION_REASONS,
    CurveClient,
    check_window_name,
    normalize_name,
    resolve_key,
    subscriber_token,
)
from .serializers import Serializer, get_serializer

log = logging.getLogger(__name__)

__all__ = ["Window"]

_BROADCAST_STREAM = 1
_SUB_BATCH = 16  # broadcasts read per call from the loop, which runs its timers between calls
_POLLIN = int(zmq.POLLIN)
_FINISHED = concurrent.futures._base.FINISHED  # private but long stable: a future's state, read on the hot path


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
    ``MessageTooLarge``, never with a timeout. Timeouts may be ``None`` or
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
    ) -> None:
        name = normalize_name(name or os.environ.get("ZPROKIT_NAME"))
        endpoint = endpoint or os.environ.get("ZPROKIT_ENDPOINT")
        if not name or not isinstance(name, str):
            raise ValueError("a window needs a name: pass name=... or set ZPROKIT_NAME")
        problem = check_window_name(name)
        if problem:
            raise ValueError(f"{problem}: {short(name)}")
        self.max_payload: int | None = check_count(max_payload, "max_payload", "bytes", optional=True)
        self.max_queued: int = check_count(max_queued, "max_queued", "messages")
        if not endpoint:
            raise ValueError("a window needs the main's endpoint: pass endpoint=... or set ZPROKIT_ENDPOINT")
        endpoint = check_endpoint(endpoint, bind=False)
        self.name = name
        self.endpoint = endpoint
        self._curve = CurveClient.create(curve_secret_key, curve_public_key, curve_server_key)
        self.key = resolve_key(
            key, key_file=key_file, role="window", curve_server_key=self._curve.server_key if self._curve else None
        )
        self.timeout = check_timeout(timeout)
        self.request_timeout = check_timeout(request_timeout, "request_timeout")
        self.serializer = get_serializer(serializer)
        self.exit_with_main = exit_with_main
        self.heartbeat, self.liveness = check_liveness(heartbeat, liveness)
        self.reconnect = reconnect
        self.max_backoff = check_interval(max_backoff, "max_backoff")
        self.give_up_after = None if give_up_after is None else check_timeout(give_up_after, "give_up_after")
        self.close_reason: BaseException | None = None
        self.session = secrets.token_bytes(protocol.SESSION_SIZE)
        self._signer = protocol.Signer(self.key)
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._linger_ms = int(linger * 1000)

        # I/O-thread state
        self._probe: zmq.Socket[Any] | None = None
        self._dealer: SharedSocket | None = None  # any thread sends on it; the loop reads
        self._monitor: zmq.Socket[Any] | None = None
        self._sub: zmq.Socket[Any] | None = None
        self._sub_topics: list[bytes] = []
        self._sub_endpoint = ""
        self._sub_nonce: str | None = None  # the handshake's nonce, when the PUB port wants a password
        self._last_pub = 0.0  # when the SUB last brought anything (a broadcast, the main's heartbeat)
        self._last_bseq = 0  # the number of the last broadcast from this main (0: none yet)
        self._bseq_session = b""  # the main session those numbers belong to (kept across rejoins)
        self._main_session: bytes | None = None
        self._main_max: int | None = None  # the largest message the main reads (from WELCOME)
        self._connected = False
        self._attempt = 0  # handshakes started; a timer of an earlier attempt is stale
        self._failures = 0  # reconnect attempts since the main was lost (backoff exponent)
        self._lost_at: float | None = None
        self._last_seen = self._last_sent = self._last_ping = 0.0
        self._guard = protocol.ReplayGuard()
        self._seq = itertools.count(1)
        self._ids = itertools.count(1)
        # The keys exist from the start: the loop and a reading caller both count, and `+= 1` on
        # an existing key of a dict is one step under the GIL, where a missing one calls __missing__.
        self._stats: Counter[str] = Counter(messages_in=0, messages_out=0, unhandled=0, late_replies=0,
                                            broadcast_link_lost=0, broadcasts_missed=0, callback_errors=0,
                                            cancelled_before_start=0)
        # One-way deliveries made while the loop works through a batch, by lane: handed to the
        # pool as one job per lane when the batch ends (loop thread only; see _deliver).
        self._batching = False
        self._due: dict[Any, list[Callable[[], None]]] = {}
        self._rejected: Counter[str] = Counter()
        self._warn = RateLimitedLog(log)
        self._probe_monitor: zmq.Socket[Any] | None = None

        # shared
        self._from_main = Listeners()
        self._from_render = Listeners()
        self._broadcast = Listeners()
        self._ready = threading.Event()
        self._handshake_error: BaseException | None = None
        self._closed = False
        self._closed_event = threading.Event()
        self._close_lock = threading.Lock()
        self._shut = False  # close() has run (or runs)
        self._born, self._pid = fork_generation(), os.getpid()
        self._is_ready = ready
        self._hello_ready = ready  # what the last HELLO said
        # Requests from the main or other windows waiting in the pool, by the main's msg_id, so a
        # caller that gives up (CANCEL) stops them before they start (loop adds, a worker pops).
        self._serving: dict[tuple[bytes, int], QueuedCall] = {}  # by (the main's session, its msg_id)
        self._errors_lock = threading.Lock()  # counters the pool threads change, and the backlogs below
        self._oneway_backlog = 0  # one-way messages queued for callbacks, not yet handled
        self._request_backlog = 0  # calls handed to the pool and not yet taken (cancelled ones too)
        self._credit_due = 0  # handled one-way messages not yet reported to the main (CREDIT)
        self._broadcast_backlog = 0  # broadcasts queued for callbacks, not yet handled
        self._sub_paused = False  # the SUB is not read while the broadcast backlog is full

        self._dispatch = Dispatcher(f"zprokit-{name}", workers)
        self._loop = IOLoop(f"zprokit-{name}-io")
        self._pending = PendingRequests(self._loop, self._on_expired)
        self._loop.start(on_stop=self._close_sockets, on_fail=self._on_loop_failed)
        self._loop.call_soon(self._start_handshake)
        self._loop.call_soon(lambda: self._loop.call_later(self.heartbeat, self._tick))
        if not self._ready.wait(min(self.timeout + 1.0, threading.TIMEOUT_MAX)) and self._handshake_error is None:
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
        return self._request(Kind.REQUEST, "", channel, msg, timeout, f"render_msg_to_main(channel={channel!r})")

    def render_msg_to_render(
        self, name: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None
    ) -> ReplyFuture[None]:
        """Send ``msg`` one-way to window ``name`` through the main.

        The future resolves to ``None`` once the main has routed it to a live
        window, or raises ``WindowNotFound``: an unknown target is never
        dropped silently.
        """
        name = _check_target(name)
        return self._request(Kind.MESSAGE, name, channel, msg, timeout, f"render_msg_to_render({name!r})")

    def render_call_render(
        self, name: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None
    ) -> ReplyFuture[Any]:
        """Ask window ``name``; resolves to the return value of its first ``on_render_msg_to_render`` callback."""
        name = _check_target(name)
        return self._request(Kind.REQUEST, name, channel, msg, timeout, f"render_call_render({name!r})")

    def _request(
        self, kind: Kind, target: str, channel: str, msg: Any, timeout: float | None, description: str
    ) -> ReplyFuture[Any]:
        self._check_open()
        check_channel(channel)
        timeout = self.request_timeout if timeout is None else check_timeout(timeout)
        payload = self.serializer.dumps(msg)
        self._check_size(payload, target, channel)
        future: ReplyFuture[Any] = ReplyFuture(description)
        future.set_running_or_notify_cancel()
        future._reader = self._read_for
        msg_id = next(self._ids)
        if self._connected:
            # What to CANCEL when it times out: the main's handler (""), or a window's (its name);
            # a one-way message (None) has nothing to cancel.
            cancel = target if kind == Kind.REQUEST else None
            future._deadline = self._pending.add(msg_id, future, timeout, cancel)
            try:
                if self._send(kind, msg_id, target, channel, payload, raise_full=True):
                    return future
            except BaseException:  # QueueFull, or anything else: no entry is left behind
                self._pending.pop(msg_id)
                raise
            self._pending.pop(msg_id)
        fail(future, PeerLost(f"{description}: not connected to the main"))
        return future

    def _check_size(self, payload: Any, target: str, channel: str) -> None:
        """Raise ``MessageTooLarge`` if ``payload`` is over what the main reads (told in WELCOME)."""
        limit = self._main_max
        if limit is not None:
            size = protocol.wire_size(payload, self.name, target, channel)
            if size > limit:
                raise MessageTooLarge(size, limit, MAIN_NAME)

    def _on_expired(self, msg_id: int, target: str | None) -> None:
        """A request timed out: tell its callee (through the main), which then does not start it."""
        if target is not None:
            self._send(Kind.CANCEL, msg_id, target, "", ())

    # ------------------------------------------------------------------ lifecycle

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def connected(self) -> bool:
        """True while registered with a live main."""
        return self._connected and not self._closed

    def stats(self) -> WindowStats:
        """Counters (keys: ``WindowStats``)."""
        stats: dict[str, Any] = {"messages_in": 0, "messages_out": 0, "unhandled": 0, "callback_errors": 0}
        stats.update(self._stats)
        stats["pending_requests"] = len(self._pending)  # calls awaiting an answer
        stats["requests_queued"] = len(self._serving)  # calls to us waiting for the callback pool, to be run
        stats["messages_queued"] = self._oneway_backlog  # one-way messages waiting for callbacks
        stats["broadcasts_queued"] = self._broadcast_backlog  # broadcasts waiting for callbacks
        stats["rejected"] = {**dict.fromkeys(REJECTION_REASONS, 0), **self._rejected}
        return cast(WindowStats, stats)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until this window is closed (by ``close()``, the main's ``destroy_window``,
        or, with ``exit_with_main``, the main's goodbye). True if it closed in time.

        Waiting here means the window's callbacks are in place: it calls ``ready()`` first."""
        check_forked(self._born, f"window {self.name!r}", self._pid)
        self.ready()
        return self._closed_event.wait(None if timeout is None or timeout >= threading.TIMEOUT_MAX else timeout)

    def ready(self) -> None:
        """Tell the main this window's callbacks are registered: its ``wait_for_window`` returns.
        Idempotent; only needed for a window made with ``ready=False`` (as ``create_window``'s are)."""
        check_forked(self._born, f"window {self.name!r}", self._pid)
        if self._is_ready:
            return
        self._is_ready = True
        self._send(Kind.READY, 0, "", "", ())  # if not connected now, _on_registered sends it

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
            self._loop.call_soon(self._say_goodbye)
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

    def _check_open(self) -> None:
        check_forked(self._born, f"window {self.name!r}", self._pid)
        if self._closed:
            reason = self.close_reason
            raise Closed(f"window {self.name!r} is closed{f': {reason!r}' if reason else ''}") from reason

    def _on_loop_failed(self, exc: BaseException) -> None:
        """The I/O thread failed (on it): the window becomes closed, never half-alive."""
        with self._close_lock:
            self._closed = True
            if self.close_reason is None:
                self.close_reason = exc
        self._connected = False

        failed = f"window {self.name!r}'s I/O thread failed"
        self._pending.fail_all(lambda future: closed_by_failure(f"{future.description}: {failed}", exc))
        if not self._ready.is_set():  # the constructor waits: it raises this
            self._handshake_error = closed_by_failure(f"the handshake: {failed}", exc)
            self._ready.set()
        threading.Thread(target=self.close, name=f"zprokit-{self.name}-close", daemon=True).start()

    # ================================================================== I/O thread

    def _start_handshake(self) -> None:
        if self._closed:
            return
        self._attempt += 1
        # A new incarnation per handshake: the main retires the old session, and
        # nothing addressed to it (a late reply, a replay) is accepted again.
        self.session = secrets.token_bytes(protocol.SESSION_SIZE)
        self._guard = protocol.ReplayGuard()
        self._main_session = None
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
            probe.connect(self.endpoint)
        except zmq.ZMQError as e:  # the form was checked at construction; libzmq may still refuse it
            probe.close(0)
            self._fail_handshake(ValueError(f"cannot connect to {short(self.endpoint)}: {e}"))
            return
        self._probe = probe
        self._loop.add_socket(probe, self._on_probe)
        self._hello_ready = self._is_ready
        hello = {
            "name": self.name,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "serializer": self.serializer.name,
            "timeout": min(self.timeout, MAX_WAIT),  # JSON has no infinity
            "max_payload": self.max_payload,
            "ready": self._hello_ready,
            "max_queued": self.max_queued,
        }
        header = Header(Kind.HELLO, 0, next(self._seq), self.session, protocol.NO_SESSION, self.name)
        probe.send_multipart(protocol.pack(self._signer, header, [protocol.encode_body(hello)]))
        attempt = self._attempt
        limit = self.timeout if not self._ready.is_set() else min(self.timeout, 2 * self.heartbeat * self.liveness)
        if limit == math.inf:  # no limit: no timer
            return
        self._loop.call_later(limit, lambda: self._handshake_timed_out(attempt, limit))

    def _handshake_timed_out(self, attempt: int, limit: float) -> None:
        if attempt == self._attempt and not self._connected:
            where = "registering" if self._main_session else "waiting for the main's answer"
            self._fail_handshake(Timeout(f"no answer from the main at {self.endpoint} within {limit} s ({where})"))

    def _fail_handshake(self, error: BaseException) -> None:
        if not self._ready.is_set():  # the constructor is waiting: it raises this
            self._handshake_error = error
            self._ready.set()
            return
        log.warning("window %r: reconnecting failed: %s", self.name, error)
        self._drop_sockets()
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
            f"the main at {self.endpoint} does not admit our CURVE public key "
            f"{self._curve.public_key.decode() if self._curve else ''}: is it on its allow-list?"
        ))

    def _on_probe(self) -> None:
        assert self._probe is not None
        try:
            frames = self._probe.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        if protocol.is_denial(frames):
            self._fail_handshake(AuthenticationError(f"the main at {self.endpoint} refused our signature: wrong key?"))
            return
        try:
            msg = protocol.unpack(self._signer, frames)
        except Rejected as e:
            if e.reason == "bad_signature":
                self._fail_handshake(AuthenticationError(f"cannot verify the main at {self.endpoint}: wrong key?"))
            else:
                self._fail_handshake(ProtocolError(f"the main at {self.endpoint} answered with {e}"))
            return
        h = msg.header
        if h.peer_session != self.session:
            self._rejected["stale_session"] += 1
            return
        body = protocol.decode_body(msg.payload)
        self._drop_probe()
        if h.kind == Kind.REFUSE:
            reason = body.get("reason")
            if reason == "name_in_use":
                self._fail_handshake(NameInUse(self.name))
            elif reason == "unauthenticated":
                self._fail_handshake(AuthenticationError(f"the main refused window {self.name!r}: {body.get('message')}"))
            else:
                self._fail_handshake(ProtocolError(f"the main refused window {self.name!r}: {body.get('message')}"))
            return
        if h.kind != Kind.WELCOME:
            self._fail_handshake(ProtocolError(f"unexpected {h.kind.name} during the handshake"))
            return
        if self._bseq_session != h.session:  # another main (or a restart): its numbers start afresh
            self._bseq_session, self._last_bseq = h.session, 0
        self._main_session = h.session
        max_payload = body.get("max_payload")
        self._main_max = max_payload if isinstance(max_payload, int) and max_payload > 0 else None
        self._guard.new_session(MAIN_NAME, h.session, h.seq)
        nonce = str(body["nonce"])
        dealer = self._ctx.socket(zmq.DEALER)
        sub = self._new_sub(str(body["nonce"]) if body.get("pub_auth") == "plain" else None)
        dealer.setsockopt(zmq.LINGER, self._linger_ms)
        if self._curve is not None:
            self._curve.apply(dealer)
        # The nonce makes the routing id one that nobody else can claim (see zprokit.main).
        dealer.setsockopt(zmq.ROUTING_ID, f"{self.name}\0{nonce}".encode())
        self._sub_topics = [
            protocol.BROADCAST_PREFIX,
            protocol.HEARTBEAT_TOPIC,
            # Subscribed last: when the main sees this one, the broadcast subscription is in force too.
            protocol.CONTROL_PREFIX + f"{self.name}\0{nonce}".encode(),
        ]
        self._sub_endpoint = _pub_endpoint(self.endpoint, str(body["pub"]))
        self._connect_sub(sub)
        dealer.connect(self.endpoint)
        # The main's connection closing (its process died or restarted) is known at
        # once here; heartbeats cover links that die without a word.
        self._monitor = dealer.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._dealer, self._sub = SharedSocket(dealer, self._loop), sub
        self._loop.add_socket(self._monitor, self._on_monitor)
        self._loop.add_shared(self._dealer, self._on_dealer, self._flush_due)
        self._loop.add_socket(sub, self._on_sub)
        self._send(Kind.REGISTER, 0, "", "", [protocol.encode_body({"nonce": nonce})], force=True)

    def _on_monitor(self) -> None:
        assert self._monitor is not None
        try:
            self._monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        # What the main sent before it went (its goodbye, a last reply) may still wait unread:
        # read it first, or a goodbye would look like a crash, and an answer would be lost.
        dealer = self._dealer
        if dealer is not None and not dealer.rx.acquire(blocking=False):
            # A caller reads it: what waits there reaches the loop through that caller (a
            # goodbye included), so look again in a moment instead of dropping the socket now.
            self._loop.call_later(0.05, functools.partial(self._connection_closed, dealer))
            return
        self._connection_closed(dealer, locked=True)

    def _connection_closed(self, dealer: SharedSocket | None, locked: bool = False) -> None:
        if dealer is not self._dealer:
            return  # dropped meanwhile (a goodbye, a reconnect)
        if dealer is not None and not locked:
            if not dealer.rx.acquire(blocking=False):
                self._loop.call_later(0.05, functools.partial(self._connection_closed, dealer))
                return
            locked = True
        if dealer is not None and locked:
            try:
                for frames in dealer.drain():
                    self._on_dealer(frames)
            finally:
                dealer.rx.release()
            self._flush_due()
        self._lose_main("its connection closed")

    def _new_sub(self, nonce: str | None) -> zmq.Socket[Any]:
        """A SUB socket for the main's PUB port; with ``nonce``, it logs in with the password
        that this handshake's nonce gives it (the main admits no other subscriber)."""
        self._sub_nonce = nonce
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, self._linger_ms)
        if self._curve is not None:
            self._curve.apply(sub)
        elif nonce is not None:
            sub.setsockopt(zmq.PLAIN_USERNAME, self.name.encode())
            sub.setsockopt(zmq.PLAIN_PASSWORD, subscriber_token(self.key, self.name, nonce).encode())
        return sub

    def _connect_sub(self, sub: zmq.Socket[Any]) -> None:
        for topic in self._sub_topics:
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        sub.connect(self._sub_endpoint)
        self._last_pub = time.monotonic()

    def _check_sub(self, now: float) -> None:
        """The broadcast link: the main publishes a heartbeat; silent for ``heartbeat * liveness``
        (its connection dropped without a word: a firewall, a NAT), the SUB dials again.

        Our pings travel on the DEALER, and ZeroMQ's own ZMTP heartbeats on the PUB/SUB pair
        close a connection whose reader lags (its PONG waits behind the data), dropping
        broadcasts, so the link is watched here, where a lagging reader shows as input waiting.
        """
        sub = self._sub
        # Beyond the main's own limit for a subscriber that stopped reading (about heartbeat *
        # liveness, at least 2 s, then TCP cuts it): until then that subscriber may hold the
        # main's heartbeat back from everyone (XPUB_NODROP), and a healthy link looks silent.
        silent = self.heartbeat * self.liveness
        if sub is None or now - self._last_pub <= 2 * silent + max(2.0, silent):
            return
        if zmq.zmq_poll([(sub, _POLLIN)], 0):  # unread input: the link is alive, we are behind
            self._last_pub = now
            return
        self._stats["broadcast_link_lost"] += 1
        self._warn.warning("broadcast_link_lost", "window %r: the broadcast link to the main closed "
                           "(no heartbeat for %.1f s); dialling again (broadcasts sent meanwhile are missed)",
                           self.name, now - self._last_pub)
        self._loop.remove_socket(sub)
        sub.close(0)
        self._sub = sub = self._new_sub(self._sub_nonce)
        self._connect_sub(sub)
        self._loop.add_socket(sub, self._on_sub)

    def _on_dealer(self, frames: list[Any], on_loop: bool = True) -> None:
        """A message from the main, read by the loop or (``on_loop=False``) by a waiting caller.

        A caller handles answers to requests itself and hands everything else
        to the loop, in order: the loop runs what was handed over before it
        reads on (see ``IOLoop``).
        """
        if self._dealer is None:  # dropped while this batch was read
            return
        if on_loop:
            self._batching = True  # until _flush_due, at the end of the loop's batch
        self._stats["messages_in"] += 1
        try:
            if len(frames) == 1:
                # One frame, the common case: verified and split without building objects,
                # and an answer settled straight from the fields.
                kind, msg_id, seq, session, peer, source, target, channel, part, flags = protocol.unpack_one(
                    self._signer, frames[0], self.max_payload)
                if self._settle_fast(kind, msg_id, seq, session, peer, part):
                    return
                header = Header(kind, msg_id, seq, session, peer, source, target, channel, flags)
                msg = protocol.Message(header, () if part is None else (part,))
            else:
                msg = protocol.unpack(self._signer, [frames[0], *(f.buffer for f in frames[1:])],
                                      max_size=self.max_payload)
            h = msg.header
            if h.peer_session != self.session:
                raise Rejected("stale_session")
            if h.session != self._main_session:
                if h.kind == Kind.ERROR and self._connected:
                    # A main that does not know us answers on our current session: it restarted.
                    self._on_loop(on_loop, self._lose_main, "the main restarted")
                    return
                raise Rejected("stale_session")
            if not self._guard.accept(MAIN_NAME, h.session, h.seq):
                raise Rejected("replay")
            self._last_seen = time.monotonic()
            handler = self._KIND_HANDLERS.get(h.kind)
            if handler is None:
                raise Rejected("malformed", f"unexpected {h.kind.name}")
            if on_loop:
                handler(self, msg)
            elif handler is Window._on_reply:
                self._on_reply(msg, on_loop=False)
            else:
                self._loop.call_soon(functools.partial(handler, self, msg))
        except Rejected as e:
            self._reject(e, "a message")

    def _settle_fast(self, kind: Kind, msg_id: int, seq: int, session: bytes, peer: bytes, payload: Any) -> bool:
        """A verified REPLY or ACK from our main, settled in fewer steps than the general
        path takes; False (nothing done, nothing recorded) for anything else."""
        if (kind != Kind.REPLY and kind != Kind.ACK) or peer != self.session or session != self._main_session:
            return False
        if not self._guard.accept(MAIN_NAME, session, seq):
            return False
        self._last_seen = time.monotonic()
        self._settle(msg_id, kind, () if payload is None else (payload,))
        return True

    def _on_loop(self, on_loop: bool, fn: Callable[..., None], *args: Any) -> None:
        if on_loop:
            fn(*args)
        else:
            self._loop.call_soon(functools.partial(fn, *args))

    def _read_for(self, future: ReplyFuture[Any], timeout: float | None) -> float | None:
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
        check_forked(self._born, f"window {self.name!r}", self._pid)
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        dealer = self._dealer
        if dealer is None or self._loop.in_loop or not dealer.rx.acquire(blocking=False):
            return timeout
        # The request's own deadline wakes us too: the loop fails the future then.
        until = future._deadline if deadline is None else min(deadline, future._deadline)
        loop, lock = self._loop, dealer.lock
        loop.pause(dealer)
        try:
            while future._state != _FINISHED:
                with lock:
                    if dealer.closed:
                        break
                    parts = dealer.recv_locked() if dealer.input_waiting_locked() else None
                if parts is not None:
                    try:
                        self._on_dealer(parts, on_loop=False)
                    except Exception:  # a bug in zprokit: say so, as the loop would, and read on
                        log.exception("window %r: error handling a message", self.name)
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

    def _on_sub(self) -> None:
        # A few messages a call: the loop calls again while input waits, a batch at a time, and
        # runs its timers in between; a long broadcast stream must not starve the heartbeat.
        sub = self._sub
        assert sub is not None
        self._batching = True
        try:
            for i in range(_SUB_BATCH):
                if self._broadcast_backlog >= self.max_queued:
                    # Bounded: stop reading; the main's broadcast() waits for room (XPUB_NODROP)
                    # until our callbacks catch up (see _handled_broadcast).
                    self._sub_paused = True
                    self._loop.remove_socket(sub)
                    return
                if i and not zmq.zmq_poll([(sub, _POLLIN)], 0):
                    return
                try:
                    frames = recv_message(sub, copied=1)  # the topic as bytes, the rest uncopied
                except zmq.Again:
                    return
                self._on_broadcast_frames(frames)
        finally:
            self._flush_due()

    def _on_broadcast_frames(self, frames: list[Any]) -> None:
        self._stats["messages_in"] += 1
        try:
            if len(frames) == 2:  # the topic and one frame, the common case
                kind, _, seq, session, _, _, _, topic, part, _ = protocol.unpack_one(
                    self._signer, frames[1].buffer, self.max_payload, topic=frames[0])
                payload: Any = () if part is None else (part,)
            else:
                msg = protocol.unpack(self._signer, [frames[0], *(f.buffer for f in frames[1:])], with_topic=True,
                                      max_size=self.max_payload)
                h = msg.header
                kind, session, seq, topic, payload = h.kind, h.session, h.seq, h.channel, msg.payload
            if session != self._main_session:
                raise Rejected("stale_session")
            if not self._guard.accept(MAIN_NAME, session, seq, stream=_BROADCAST_STREAM):
                raise Rejected("replay")
            self._last_pub = time.monotonic()  # the broadcast link lives (see _check_sub)
            # The main numbers its broadcasts and PUB heartbeats without gaps: a gap is what we
            # missed (the link was down, or we joined late), counted and said, never silent.
            if self._last_bseq and seq > self._last_bseq + 1:
                missed = seq - self._last_bseq - 1
                self._stats["broadcasts_missed"] += missed
                self._warn.warning("broadcasts_missed", "window %r missed %d broadcasts (numbers %d to %d)",
                                   self.name, missed, self._last_bseq + 1, seq - 1)
            self._last_bseq = seq
            if kind == Kind.PING:  # the main's heartbeat on the PUB: nothing to deliver
                return
            # Not a sign of life: a broadcast shows the main is up, not that it still has us.
            # A main that dropped us (a partition it noticed first) goes on broadcasting to
            # our old connection but no longer answers our pings; that must end in a rejoin.
            self._on_broadcast(topic, payload)
        except Rejected as e:
            self._reject(e, "a broadcast")

    def _deliver(self, fn: Callable[[], None], lane: Any) -> None:
        """Hand a one-way delivery to the pool, in its lane; in a batch, when the batch ends."""
        if self._batching:
            self._due.setdefault(lane, []).append(fn)
        else:
            self._dispatch.submit(fn, lane=lane)

    def _flush_due(self) -> None:
        """The end of a batch on the loop: one pool job per lane, for all it delivers, in order.

        One job for many messages spares the pool a wake-up (and the GIL a handoff) per message.
        """
        self._batching = False
        due, self._due = self._due, {}
        for lane, fns in due.items():
            self._dispatch.submit(fns[0] if len(fns) == 1 else functools.partial(_run_all, fns), lane=lane)

    def _reject(self, e: Rejected, what: str) -> None:
        self._rejected[e.reason] += 1
        if e.reason in REJECTION_REASONS:
            self._warn.warning(e.reason, "window %r dropped %s: %s", self.name, what, e)
        else:
            log.debug("window %r dropped %s: %s", self.name, what, e)

    def _on_registered(self, msg: protocol.Message) -> None:
        self._connected = True
        if self._is_ready and not self._hello_ready:  # ready() came while this handshake was under way
            self._send(Kind.READY, 0, "", "", ())
        if self._ready.is_set():
            log.warning("window %r: reconnected to the main at %s", self.name, self.endpoint)
        self._failures = 0
        self._lost_at = None
        self._ready.set()

    def _on_reply(self, msg: protocol.Message, on_loop: bool = True) -> None:
        h = msg.header
        if h.kind == Kind.ERROR and protocol.decode_body(msg.payload).get("rejoin") is True:
            # The main dropped us (it stopped hearing us for a while) but we still reach it.
            self._on_loop(on_loop, self._lose_main, "the main had dropped this window")
            return
        self._settle(h.msg_id, h.kind, msg.payload)

    def _settle(self, msg_id: int, kind: Kind, payload: Any) -> None:
        """Resolve the request ``msg_id`` with a REPLY, ACK or ERROR."""
        pending = self._pending.pop(msg_id)
        if pending is None:
            self._stats["late_replies"] += 1  # its request timed out already
            return
        future = pending[0]
        try:
            if kind == Kind.REPLY:
                future.set_result(self.serializer.loads(payload))
            elif kind == Kind.ACK:
                future.set_result(None)
            else:
                future.set_exception(protocol.error_from_body(protocol.decode_body(payload)))
        except Exception as e:
            fail(future, ProtocolError(f"cannot read the answer: {e!r}"))

    def _on_incoming(self, msg: protocol.Message) -> None:
        """A REQUEST or one-way MESSAGE from the main (no source) or another window (via the main)."""
        h = msg.header
        sender = h.source or MAIN_NAME
        listeners = self._from_render if h.source else self._from_main
        callbacks = listeners.get(h.channel)
        event = Event(sender=sender, channel=h.channel, kind="request" if h.kind == Kind.REQUEST else "message",
                      receiver=self.name, from_main=not h.source)
        if h.kind == Kind.REQUEST:
            error: Exception | None = None
            if not callbacks:
                error = NoHandler(h.channel, self.name)
            elif self._request_backlog >= self.max_queued:  # bounded (cancelled ones too, until taken): told
                self._stats["refused_busy"] += 1
                error = QueueFull(self.name, f"window {self.name!r} has {self._request_backlog} calls waiting for its "
                                             "callbacks (its max_queued): try again later")
            if error is not None:
                body = protocol.error_body(error, self.name)
                self._send(Kind.ERROR, h.msg_id, "", "", [protocol.encode_body(body)])
                return
            serving = self._serving[(h.session, h.msg_id)] = QueuedCall()
            with self._errors_lock:
                self._request_backlog += 1
            self._dispatch.submit(functools.partial(self._answer_queued, serving, callbacks[0], event, msg))
            return
        if not callbacks:
            self._stats["unhandled"] += 1
            self._warn.warning("unhandled", "window %r: no callback for a message from %s on channel %r",
                               self.name, sender, h.channel)
            # Counted where the sender's side can see it too: the main's stats()["unhandled"].
            self._send(Kind.UNHANDLED, 0, h.source, h.channel, ())
            self._handled_one_way(queued=False)
            return
        with self._errors_lock:
            self._oneway_backlog += 1
        self._queue_delivery(callbacks, event, msg.payload, ("message", h.channel), self._handled_one_way)

    def _queue_delivery(
        self, callbacks: Sequence[Callable[..., Any]], event: Event, payload: Any, lane: Any,
        handled: Callable[[], None],
    ) -> None:
        """Deliver a one-way message or broadcast to ``callbacks`` in ``lane``; ``handled()`` after."""

        def deliver() -> None:
            try:
                args = self.serializer.loads(payload)
                for cb in callbacks:
                    self._notify(cb, event, args)
            finally:
                handled()

        self._deliver(deliver, lane)

    def _handled_one_way(self, queued: bool = True) -> None:
        """One more one-way message handled: give the main its credit back, in batches while
        busy, at once when nothing is left queued (so the main never waits on a remainder)."""
        with self._errors_lock:
            if queued:
                self._oneway_backlog -= 1
            self._credit_due += 1
            if self._credit_due < max(1, self.max_queued // 8) and self._oneway_backlog > 0:
                return
            credit, self._credit_due = self._credit_due, 0
        self._send(Kind.CREDIT, credit, "", "", ())

    def _on_cancel(self, msg: protocol.Message) -> None:
        """The caller of our request ``msg_id`` gave up: if it has not started, it never will."""
        serving = self._serving.pop((msg.header.session, msg.header.msg_id), None)
        if serving is not None:
            serving.cancelled = True

    def _answer_queued(self, serving: QueuedCall, cb: Callable[..., Any], event: Event, msg: protocol.Message) -> None:
        """``_answer`` on the pool, unless the caller gave up while the request waited (CANCEL)."""
        self._serving.pop((msg.header.session, msg.header.msg_id), None)  # one step: a CANCEL may pop it meanwhile
        with self._errors_lock:
            self._request_backlog -= 1
            if serving.cancelled:
                self._stats["cancelled_before_start"] += 1
                return
        self._answer(cb, event, msg)

    def _notify(self, cb: Callable[..., Any], event: Event, args: Any) -> None:
        """Call a one-way or broadcast callback; an ``async def`` one is awaited, as for calls."""

        def done(result: Any, exc: BaseException | None) -> None:
            if exc is not None:  # no caller to tell: logged and counted, and the lane goes on
                with self._errors_lock:
                    self._stats["callback_errors"] += 1
                log.error("window %r: %s callback %r raised", self.name, event.kind, cb, exc_info=exc)

        call_handler(self._dispatch, cb, (event, args), done)

    def _answer(self, cb: Callable[..., Any], event: Event, msg: protocol.Message) -> None:
        msg_id = msg.header.msg_id
        asked_by, asked_as = msg.header.session, self.session  # the main that asked, and us then

        def done(result: Any, exc: BaseException | None) -> None:
            if self._main_session != asked_by or self.session != asked_as:
                # Another main (a restart) or another incarnation of us numbers its calls afresh:
                # it must never get this answer.
                with self._errors_lock:
                    self._stats["late_answers"] += 1
                return
            if exc is None:
                try:
                    kind, payload = Kind.REPLY, self.serializer.dumps(result)
                    self._check_size(payload, "", "")
                except Exception as e:  # an unpicklable or oversized return value is the callback's error
                    exc = e
            if exc is not None:
                body = protocol.error_body(exc, self.name, "".join(traceback.format_exception(exc)), from_handler=True)
                kind, payload = Kind.ERROR, [protocol.encode_body(body)]
            self._send(kind, msg_id, "", "", payload)

        try:
            args = self.serializer.loads(msg.payload)
        except Exception as e:
            done(None, e)
            return
        call_handler(self._dispatch, cb, (event, args), done)

    def _on_broadcast(self, topic: str, payload: Any) -> None:
        callbacks = [cb for prefix, cbs in self._broadcast.items() if topic.startswith(prefix) for cb in cbs]
        if not callbacks:
            self._stats["unhandled"] += 1
            return
        event = Event(sender=MAIN_NAME, channel=topic, kind="broadcast", topic=topic, receiver=self.name,
                      from_main=True)
        with self._errors_lock:
            self._broadcast_backlog += 1
        self._queue_delivery(callbacks, event, payload, "broadcast", self._handled_broadcast)

    def _handled_broadcast(self) -> None:
        with self._errors_lock:
            self._broadcast_backlog -= 1
            resume = self._sub_paused and self._broadcast_backlog <= self.max_queued // 2
            if resume:
                self._sub_paused = False
        if resume:
            self._loop.call_soon(self._resume_sub)

    def _resume_sub(self) -> None:
        if self._sub is not None:
            self._loop.add_socket(self._sub, self._on_sub)  # looks for waiting input at once

    def _on_close_request(self, msg: protocol.Message) -> None:
        log.info("window %r: the main asked us to close", self.name)
        threading.Thread(target=self.close, name=f"zprokit-{self.name}-close", daemon=True).start()

    def _on_bye(self, msg: protocol.Message) -> None:
        # Even if the closed connection was seen first (the goodbye was handed over by a reading
        # caller, after the loop had noticed the hang-up): a goodbye is a goodbye.
        self._lose_main("the main closed", retry=not self.exit_with_main)
        if self.exit_with_main:
            self._close_in_background(PeerLost(
                f"the main at {self.endpoint} was closed (it said goodbye); "
                "Window(exit_with_main=False) keeps a window reconnecting after that"))

    def _close_in_background(self, reason: BaseException | None) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        threading.Thread(target=self.close, name=f"zprokit-{self.name}-close", daemon=True).start()

    def _lose_main(self, reason: str, retry: bool = True) -> None:
        """The main is gone: fail what waits on it, drop the sockets, and (maybe) reconnect."""
        if not self._connected:
            return
        # Without a retry this is a goodbye the window was told to follow (exit_with_main): no alarm.
        log.log(logging.WARNING if retry else logging.INFO, "window %r: lost the main at %s: %s", self.name, self.endpoint, reason)
        self._connected = False
        self._lost_at = time.monotonic()
        self._pending.fail_all(lambda future: PeerLost(f"{future.description}: {reason} with the request pending"))
        for serving in self._serving.values():  # nobody to answer: calls not yet started never will be
            serving.cancelled = True
        self._serving.clear()
        self._drop_sockets()
        if retry and self.reconnect:
            self._schedule_reconnect()
        elif not self.exit_with_main:
            self._close_in_background(PeerLost(f"lost the main at {self.endpoint}: {reason}"))

    def _schedule_reconnect(self) -> None:
        if self._closed:
            return
        lost_for = time.monotonic() - (self._lost_at or time.monotonic())
        if self.give_up_after is not None and lost_for >= self.give_up_after:
            self._close_in_background(PeerLost(f"gave up reconnecting to {self.endpoint} after {lost_for:.1f} s"))
            return
        delay = min(self.max_backoff, 0.05 * 2**self._failures) * random.uniform(0.5, 1.5)
        self._failures += 1
        self._loop.call_later(delay, self._start_handshake)

    def _tick(self) -> None:
        """Heartbeat: ping a quiet main, and declare a silent one lost."""
        if self._closed:
            return
        self._loop.call_later(self.heartbeat / 4, self._tick)  # lost within a quarter beat of the limit
        if not self._connected:
            return
        now = time.monotonic()
        if now - self._last_seen > self.heartbeat * self.liveness:
            dealer = self._dealer
            if dealer is not None and dealer.input_waiting():
                return  # the main spoke and we have not read it yet (we are busy): it is not silent
            self._lose_main(f"no answer for {now - self._last_seen:.1f} s")
            return
        quiet = now - self._last_seen >= self.heartbeat or now - self._last_sent >= self.heartbeat
        if quiet and now - self._last_ping >= self.heartbeat:  # at most one ping a heartbeat
            self._last_ping = now
            self._send(Kind.PING, 0, "", "", ())
        self._check_sub(now)

    def _on_ping(self, msg: protocol.Message) -> None:
        self._send(Kind.PONG, msg.header.msg_id, "", "", ())

    def _on_pong(self, msg: protocol.Message) -> None:
        pass  # any verified traffic is a sign of life

    _KIND_HANDLERS: dict[Kind, Callable[["Window", protocol.Message], None]] = {
        Kind.REGISTERED: _on_registered,
        Kind.REPLY: _on_reply,
        Kind.ERROR: _on_reply,
        Kind.ACK: _on_reply,
        Kind.REQUEST: _on_incoming,
        Kind.MESSAGE: _on_incoming,
        Kind.CLOSE: _on_close_request,
        Kind.BYE: _on_bye,
        Kind.PING: _on_ping,
        Kind.PONG: _on_pong,
        Kind.CANCEL: _on_cancel,
    }

    def _send(
        self,
        kind: Kind,
        msg_id: int,
        target: str,
        channel: str,
        payload: Any,
        force: bool = False,
        raise_full: bool = False,
    ) -> bool:
        """Number, sign and send to the main, from any thread; False if not connected.

        A full queue to the main (its high-water mark) is counted in
        ``dropped_hwm``; with ``raise_full`` the caller gets ``QueueFull``.
        """
        dealer = self._dealer
        if dealer is None:
            return False
        with dealer.lock:
            if dealer.closed or not (self._connected or force) or self._main_session is None:
                return False
            seq = next(self._seq)
            if protocol.fits_one(payload):  # the common case: no Header object needed
                frames = protocol.pack_one(self._signer, kind, msg_id, seq, self.session, self._main_session,
                                           self.name, target, channel, payload[0])
            else:
                header = Header(kind, msg_id, seq, self.session, self._main_session, self.name, target, channel)
                frames = protocol.pack(self._signer, header, payload)
            try:
                dealer.send_locked(frames)
            except zmq.Again as e:
                self._stats["dropped_hwm"] += 1
                self._warn.warning("dropped_hwm", "window %r: the queue to the main is full; message not sent", self.name)
                if raise_full:
                    raise QueueFull(MAIN_NAME) from e
                return False
            self._last_sent = time.monotonic()
            self._stats["messages_out"] += 1
            return True

    def _say_goodbye(self) -> None:
        if self._connected:
            self._send(Kind.BYE, 0, "", "", ())
        self._connected = False

    def _close_sockets(self) -> None:
        self._pending.fail_all(lambda future: Closed(f"window {self.name!r} was closed with the request pending"))
        self._drop_sockets(self._linger_ms)

    def _drop_sockets(self, linger_ms: int = 0) -> None:
        self._drop_probe()
        dealer, self._dealer = self._dealer, None
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
        if self._sub is not None:
            self._loop.remove_socket(self._sub)
            self._sub.close(linger_ms)
            self._sub = None


def _run_all(fns: list[Callable[[], None]]) -> None:
    for fn in fns:
        try:
            fn()
        except BaseException:  # each delivery reports its callbacks' errors; this is a bug net
            log.exception("error in a delivery")


def _check_target(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"target window name must be a non-empty str, got {short(name)}")
    return normalize_name(name)


def _pub_endpoint(router_endpoint: str, pub: str) -> str:
    """Where to reach the main's PUB: its port, on the host we reached the ROUTER at."""
    if not (router_endpoint.startswith("tcp://") and pub.startswith("tcp://")):
        return pub
    host = router_endpoint[len("tcp://"):].rsplit(":", 1)[0]
    port = pub.rsplit(":", 1)[1]
    return f"tcp://{host}:{port}"
