"""The main's sockets: the ROUTER and the XPUB, bound and configured, their monitors, the ZAP handler.

Nothing here decides anything about a message: ``Main`` and its ``Router``
and ``Publisher`` do. This is where libzmq's options live, and where a
ZeroMQ error of binding becomes an ``OSError``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Callable, Iterator, cast

import zmq

from ._common import short
from .security import PUB_DOMAIN, CurveServer, ZapHandler, subscriber_token

log = logging.getLogger("zprokit.main")

__all__ = ["MainSockets", "peer_address", "source_fd", "tcp_limits"]


class MainSockets:
    """The ROUTER (``router``) and the XPUB (``pub``), bound, with monitors and ZAP.

    ``pub_auth``: the PUB port admits only SUBs that log in (PLAIN) with a
    password a handshake gave them (no CURVE), so strangers cannot subscribe;
    False under CURVE (the allow-list does it), or when another main on the
    same context serves ZAP already.
    """

    def __init__(
        self,
        ctx: zmq.Context[Any],
        endpoint: str,
        pub_endpoint: str | None,
        *,
        curve: CurveServer | None,
        heartbeat: float,
        liveness: int,
        linger_ms: int,
        max_message_size: int | None,
        key: bytes,
        on_key_denied: Callable[[bytes], None],
    ) -> None:
        self._key = key  # the PUB port's passwords are derived from it (security.subscriber_token)
        self._curve = curve
        self.router = ctx.socket(zmq.ROUTER)
        self.pub = ctx.socket(zmq.XPUB)
        self.zap: ZapHandler | None = None
        self.pub_auth = False
        try:
            if curve is not None:
                # Bound before the sockets: with no ZAP handler, libzmq lets every CURVE client in.
                self.zap = ZapHandler(ctx, curve.names, on_key_denied)
                self.zap.start()
            else:
                # Without CURVE, strangers are still kept off the PUB port: a window's SUB presents
                # a password only its handshake gave it, checked by ZAP before any subscription.
                zap = ZapHandler(ctx, {}, on_key_denied, _subscriber_denied)
                try:
                    zap.start()
                except ValueError as e:  # a context shared with another main: it has the ZAP endpoint
                    log.warning("main: the broadcast port admits any subscriber: %s", e)
                else:
                    self.zap, self.pub_auth = zap, True
                    self.pub.setsockopt(zmq.PLAIN_SERVER, 1)
                    self.pub.setsockopt(zmq.ZAP_DOMAIN, PUB_DOMAIN.encode())
            # Broadcasts are never dropped at the high-water mark: broadcast() waits for room and
            # tells its caller (QueueFull) when there is none. A window's host that vanished
            # without a word would hold its queue full until TCP gave up, for ever with the
            # defaults: keepalives and a retransmission limit end such a connection within
            # about a liveness period (see tcp_limits).
            self.pub.setsockopt(zmq.XPUB_NODROP, 1)
            for option, value in tcp_limits(heartbeat, liveness):
                self.pub.setsockopt(option, value)
            for sock in (self.router, self.pub):
                sock.setsockopt(zmq.LINGER, linger_ms)
                if max_message_size is not None:
                    sock.setsockopt(zmq.MAXMSGSIZE, max_message_size)
                if curve is not None:
                    curve.apply(sock)
            self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
            self.router.bind(_bindable(endpoint))
            self.endpoint: str = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
            self.pub.bind(_bindable(pub_endpoint or _default_pub_endpoint(self.endpoint)))
            self.pub_endpoint: str = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
            # A closed connection (a window that crashed, on this host or another) shows up
            # here at once; heartbeats are only needed for links that die without a word.
            self.monitor = self.router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            # Subscribers the PUB port turned away (no window's password, or none at all): counted.
            self.pub_monitor: zmq.Socket[Any] | None = None
            if self.pub_auth:
                self.pub_monitor = self.pub.get_monitor_socket(
                    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        except Exception as e:
            for monitor in (getattr(self, "monitor", None), getattr(self, "pub_monitor", None)):
                if monitor is not None:
                    monitor.close(0)
            self.router.close(0)
            self.pub.close(0)
            if self.zap is not None:
                self.zap.stop()
            if isinstance(e, zmq.ZMQError):  # no zmq exception escapes: a bind that failed is an OSError
                raise OSError(e.errno, f"cannot bind {short(endpoint)}: {e.strerror}") from e
            raise

    def welcome(self, name: str, nonce: str) -> dict[str, Any]:
        """What WELCOME says of the sockets (where the PUB is, whether its SUB logs in), and
        the PUB port admits the login that this handshake's nonce gives (I/O thread)."""
        if self.pub_auth:
            assert self.zap is not None
            self.zap.allow_subscriber(name, subscriber_token(self._key, name, nonce))
        return {"pub": self.pub_endpoint, "pub_auth": "plain" if self.pub_auth else None}

    def forget_login(self, name: str, nonce: str) -> None:
        """That window left, or its handshake lapsed: its PUB login is no longer admitted."""
        if self.pub_auth and self.zap is not None:
            self.zap.forget_subscriber(name, subscriber_token(self._key, name, nonce))

    def on_pub_monitor(self, reject: Callable[[str, str], None]) -> None:
        """Subscribers the PUB port turned away (no window's password): each counted (I/O thread)."""
        assert self.pub_monitor is not None
        while True:
            try:
                self.pub_monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            reject("unauthenticated", "a subscriber to the broadcast port without a window's password")

    @contextlib.contextmanager
    def child_key(self, name: str) -> Iterator[tuple[str, str] | None]:
        """Under CURVE, a keypair for a window process ``name`` that ``create_window`` starts:
        ``(its secret key, the main's public key)``, z85; its public key is on the allow-list as
        ``name`` (one dict store: safe beside the I/O thread's reads), and leaves it again if
        the process cannot be started. Without CURVE, None."""
        if self._curve is None or self.zap is None:
            yield None
            return
        public, secret = zmq.curve_keypair()
        self.zap.allow_key(name, public)
        try:
            yield secret.decode(), self._curve.public_key.decode()
        except BaseException:
            self.zap.forget_key(public)  # no child: its key lets nobody in
            raise

    def close_monitors(self) -> None:
        """Stop the monitors (under the sockets' locks: the caller holds them)."""
        self.router.disable_monitor()
        self.monitor.close(0)
        if self.pub_monitor is not None:
            self.pub.disable_monitor()
            self.pub_monitor.close(0)

    def stop_zap(self) -> None:
        if self.zap is not None:
            self.zap.stop()


def _subscriber_denied(name: str) -> None:
    log.debug("main: the broadcast port refused a subscriber calling itself %r", name[:64])


def tcp_limits(heartbeat: float, liveness: int) -> list[tuple[int, int]]:
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


def source_fd(frame: Any) -> int | None:
    """The descriptor of the connection a message came on (ZMQ_SRCFD), or None if not told."""
    try:
        fd = frame.get(zmq.SRCFD)
    except (zmq.ZMQError, AttributeError, TypeError, ValueError):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def peer_address(frame: Any) -> str:
    """The peer address of the connection a message came on, when the transport knows one."""
    if not isinstance(frame, zmq.Frame):
        return ""
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
