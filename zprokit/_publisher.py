"""The main's broadcast side: the XPUB socket's sends (broadcasts, the heartbeat) and its events.

Broadcasts and the PUB heartbeat share one sequence of numbers, with no
gaps, so a window counts what it missed. Any thread may broadcast (under the
socket's lock); the I/O thread publishes the heartbeat and reads the XPUB's
subscription events, which complete handshakes (see ``MainSession.subscribed``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any, Callable

import zmq

from . import protocol
from ._loop import IOLoop, SharedSocket
from .errors import Closed, QueueFull
from .protocol import Kind
from .session import MainSession, Peer

__all__ = ["Publisher"]


class Publisher:
    """Signs and sends on the XPUB; reads its subscription events on the I/O thread."""

    def __init__(
        self,
        pub: SharedSocket,
        loop: IOLoop,
        signer: protocol.Signer,
        session: MainSession,
        heartbeat: float,
        on_registered: Callable[[Peer], None],
    ) -> None:
        self._pub = pub
        self._loop = loop
        self._signer = signer
        self._session = session
        self._heartbeat = heartbeat
        self._on_registered = on_registered
        self._bseq = 1  # the next number (under the socket's lock)
        self.stats: Counter[str] = Counter()  # broadcasts, broadcasts_refused (under the socket's lock)

    def broadcast(self, payload: list[Any], topic: str, limit: float) -> None:
        """Publish, waiting at most ``limit`` s for room (``XPUB_NODROP``); else ``QueueFull``."""
        wire_topic = protocol.BROADCAST_PREFIX + topic.encode()
        pub = self._pub
        deadline = math.inf
        while True:
            with pub.lock:
                frames = protocol.pack(self._signer, Kind.BROADCAST, 0, self._bseq, self._session.session,
                                       protocol.NO_SESSION, "", "", topic, payload, wire_topic)
                try:
                    pub.send_locked(frames)
                except zmq.Again:
                    pass  # a subscriber's queue is full: wait for room, below
                except (zmq.ZMQError, Closed) as e:
                    raise Closed("this main is closed") from e
                else:
                    self._bseq += 1  # numbered only once sent: the numbers a window sees have no gaps
                    self.stats["broadcasts"] += 1
                    return
            now = time.monotonic()
            if deadline == math.inf:
                deadline = now + limit
            if now >= deadline:
                with pub.lock:
                    self.stats["broadcasts_refused"] += 1
                raise QueueFull("a window", f"a window has not read broadcasts for {limit} s: its queue is full; "
                                            f"nothing was sent (broadcast(timeout=...) waits longer)")
            # The socket's descriptor signals when its state may have changed (a queue drained);
            # a short cap covers a signal the I/O thread consumed first.
            pub.wait_ready(min(deadline - now, 0.01))

    def heartbeat(self) -> None:
        """Every heartbeat (I/O thread), a PING on the PUB (topic ``H``), numbered with the
        broadcasts: a window whose SUB connection died silently (a firewall, a NAT) hears
        nothing for a while, and dials again."""
        if self._pub.closed:
            return
        self._loop.call_later(self._heartbeat, self.heartbeat)
        with self._pub.lock:
            frames = protocol.pack(self._signer, Kind.PING, 0, self._bseq, self._session.session,
                                   topic=protocol.HEARTBEAT_TOPIC)
            try:
                self._pub.send_locked(frames)
            except (zmq.ZMQError, Closed):  # a full subscriber queue: a window busy reading is not deaf
                return
            self._bseq += 1

    def on_event(self, frames: list[Any]) -> None:
        """A subscription event (I/O thread): a window's control topic completes its handshake."""
        event = frames[0]  # bytes: the one frame of a subscription event
        if not event:
            return
        topic = event[1:]
        if event[0] == 1:
            peer = self._session.subscribed(topic)
            if peer is not None:
                self._on_registered(peer)
        elif event[0] == 0:
            self._session.unsubscribed(topic)
