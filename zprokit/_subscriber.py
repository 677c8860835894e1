"""A window's SUB socket: broadcasts and the main's PUB heartbeat in, and the watch on that link.

Runs on the window's I/O thread. Reading stops while ``max_queued``
broadcasts wait for callbacks (the main's ``broadcast()`` then waits, as the
PUB is ``XPUB_NODROP``) and resumes when they drain. A link silent for too
long (its connection dropped without a word: a firewall, a NAT) is dialled
again, and the broadcasts missed meanwhile are counted from the numbers.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, Callable

import zmq

from . import protocol
from ._loop import IOLoop, recv_message
from ._ratelimit import RateLimitedLog
from .protocol import Kind, Rejected
from .security import CurveClient, subscriber_token
from .session import WindowSession

log = logging.getLogger("zprokit.window")

__all__ = ["Subscriber"]

_BATCH = 16  # messages read per call from the loop, which runs its timers between calls
_POLLIN = int(zmq.POLLIN)


class Subscriber:
    """The SUB side of a window's link to its main (I/O thread only)."""

    def __init__(
        self,
        ctx: zmq.Context[Any],
        loop: IOLoop,
        signer: protocol.Signer,
        session: WindowSession,
        *,
        key: bytes,
        curve: CurveClient | None,
        linger_ms: int,
        max_payload: int | None,
        on_broadcast: Callable[[str, Any], bool],
        on_rejected: Callable[[Rejected, str], None],  # logs it
        begin_batch: Callable[[], None],
        end_batch: Callable[[], None],
    ) -> None:
        self._ctx = ctx
        self._loop = loop
        self._signer = signer
        self._session = session
        self._key = key
        self._curve = curve
        self._linger_ms = linger_ms
        self._max_payload = max_payload
        # Its own counters, counted on the I/O thread only: the DEALER's may be counted by a
        # caller that reads it meanwhile (Window.stats() adds the two up).
        self.stats: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self._on_broadcast = on_broadcast  # (topic, payload) -> False: stop reading for now (backlog full)
        self._on_rejected = on_rejected
        self._begin_batch = begin_batch  # deliveries of one read leave for the pool together
        self._end_batch = end_batch
        self._warn = RateLimitedLog(log)
        self._sock: zmq.Socket[Any] | None = None
        self._topics: list[bytes] = []
        self._endpoint = ""
        self._nonce: str | None = None  # the handshake's nonce, when the PUB port wants a password
        # Not read while the broadcast backlog is full: set by the I/O thread; cleared by the pool
        # thread that drains the backlog (one at a time: the broadcast lane runs one job at a time).
        self.paused = False

    def connect(self, endpoint: str, topics: list[bytes], nonce: str | None) -> None:
        """A SUB to the main's PUB at ``endpoint``; with ``nonce``, it logs in with the password
        that this handshake's nonce gives it (the main admits no other subscriber)."""
        self.close(self._linger_ms)
        self._endpoint, self._topics, self._nonce = endpoint, topics, nonce
        self._dial()

    def _dial(self) -> None:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, self._linger_ms)
        if self._curve is not None:
            self._curve.apply(sock)
        elif self._nonce is not None:
            name = self._session.name
            sock.setsockopt(zmq.PLAIN_USERNAME, name.encode())
            sock.setsockopt(zmq.PLAIN_PASSWORD, subscriber_token(self._key, name, self._nonce).encode())
        for topic in self._topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        sock.connect(self._endpoint)
        self._session.last_pub = time.monotonic()
        self._sock = sock
        if not self.paused:  # paused: the broadcast backlog is full; resume() adds it when it drains
            self._loop.add_socket(sock, self.on_readable)

    def close(self, linger_ms: int = 0) -> None:
        if self._sock is not None:
            self._loop.remove_socket(self._sock)
            self._sock.close(linger_ms)
            self._sock = None

    def resume(self) -> None:
        """The broadcast backlog drained: read again (any input waiting is looked at at once)."""
        self.paused = False
        if self._sock is not None:
            self._loop.add_socket(self._sock, self.on_readable)

    def on_readable(self) -> None:
        # A few messages a call: the loop calls again while input waits, a batch at a time, and
        # runs its timers in between; a long broadcast stream must not starve the heartbeat.
        sock = self._sock
        assert sock is not None
        self._begin_batch()
        try:
            for i in range(_BATCH):
                if i and not zmq.zmq_poll([(sock, _POLLIN)], 0):
                    return
                try:
                    frames = recv_message(sock, copied=1)  # the topic as bytes, the rest uncopied
                except zmq.Again:
                    return
                if not self._receive(frames):
                    # Bounded: stop reading; the main's broadcast() waits for room (XPUB_NODROP)
                    # until our callbacks catch up (see resume).
                    self.paused = True
                    self._loop.remove_socket(sock)
                    return
        finally:
            self._end_batch()

    def _receive(self, frames: list[Any]) -> bool:
        """One message from the PUB; False when reading should pause."""
        self.stats["messages_in"] += 1
        try:
            msg = protocol.unpack(self._signer, [f.buffer for f in frames[1:]], max_size=self._max_payload,
                                  topic=frames[0])
            missed = self._session.admit_broadcast(msg, time.monotonic())
        except Rejected as e:
            self.rejected[e.reason] += 1
            self._on_rejected(e, "a broadcast")
            return True
        if missed:  # the main numbers broadcasts and heartbeats without gaps: a gap is what we missed
            self.stats["broadcasts_missed"] += missed
            self._warn.warning("broadcasts_missed", "window %r missed %d broadcasts (numbers %d to %d)",
                               self._session.name, missed, msg.seq - missed, msg.seq - 1)
        if msg.kind == Kind.PING:  # the main's heartbeat on the PUB: nothing to deliver
            return True
        return self._on_broadcast(msg.channel, msg.payload)

    def check(self, now: float) -> None:
        """The link's watch, every tick: silent too long and no input waiting: dial again.

        Our pings travel on the DEALER, and ZeroMQ's own ZMTP heartbeats on the PUB/SUB pair
        close a connection whose reader lags (its PONG waits behind the data), dropping
        broadcasts, so the link is watched here, where a lagging reader shows as input waiting.
        """
        sock = self._sock
        if sock is None or not self._session.sub_silent(now):
            return
        if zmq.zmq_poll([(sock, _POLLIN)], 0):  # unread input: the link is alive, we are behind
            self._session.last_pub = now
            return
        self.stats["broadcast_link_lost"] += 1
        self._warn.warning("broadcast_link_lost", "window %r: the broadcast link to the main closed "
                           "(no heartbeat for %.1f s); dialling again (broadcasts sent meanwhile are missed)",
                           self._session.name, now - self._session.last_pub)
        self.close(0)
        self._dial()
