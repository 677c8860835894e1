"""A window's side of a session: the handshake's answer, admission of the main's messages,
the broadcast numbering, liveness and the reconnect backoff."""

from __future__ import annotations

import itertools
import random
import secrets
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .. import protocol
from ..errors import AuthenticationError, NameInUse, ProtocolError
from ..protocol import Kind, Message, Rejected
from ._guard import BROADCAST_STREAM, MAIN_NAME, ReplayGuard

__all__ = ["Joining", "HandshakeFailed", "MainRestarted", "WindowSession"]


@dataclass
class Joining:
    """WELCOME: connect the DEALER as ``routing_id`` and the SUB to ``pub`` (logging in with
    the nonce's password when ``pub_auth``), subscribe to ``topics``, then send REGISTER."""

    nonce: str
    routing_id: bytes
    pub: str
    pub_auth: bool
    topics: list[bytes]


class HandshakeFailed(Exception):
    """The main refused us (or could not be understood): ``error`` is what the user sees."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class MainRestarted(Rejected):
    """An ERROR on our current session from a main session we do not know: the main restarted."""

    def __init__(self) -> None:
        super().__init__("stale_session", "the main restarted")


@dataclass
class WindowSession:
    """A window's session rules: the handshake, admission of the main's messages, the broadcast
    numbering, liveness and the reconnect backoff."""

    name: str
    heartbeat: float
    liveness: int
    max_backoff: float = 5.0
    give_up_after: float | None = None
    session: bytes = protocol.NO_SESSION  # ours, new per handshake
    main_session: bytes | None = None
    main_max: int | None = None  # the largest message the main reads (from WELCOME)
    connected: bool = False
    attempt: int = 0  # handshakes started; a timer of an earlier attempt is stale
    failures: int = 0  # reconnect attempts since the main was lost (the backoff's exponent)
    lost_at: float | None = None
    last_seen: float = 0.0  # the main's last verified message on the DEALER
    last_sent: float = 0.0
    last_ping: float = 0.0
    last_pub: float = 0.0  # the SUB's last verified message (a broadcast, the main's heartbeat)
    last_bseq: int = 0  # the number of the last broadcast of this main (0: none yet)
    bseq_session: bytes = b""  # the main session those numbers belong to (kept across rejoins)
    guard: ReplayGuard = field(default_factory=ReplayGuard)
    _seq: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _random: Callable[[float, float], float] = random.uniform

    def next_id(self) -> int:
        """The id of our next request (any thread: drawing from a count is one step)."""
        return next(self._ids)

    def next_seq(self) -> int:
        """The next sequence number (callers number in send order, under their socket's lock)."""
        return next(self._seq)

    def start_handshake(self) -> int:
        """A new handshake: a new session of ours (the main retires the old one, and nothing
        addressed to it is accepted again); returns its attempt number."""
        self.attempt += 1
        self.session = secrets.token_bytes(protocol.SESSION_SIZE)
        self.guard = ReplayGuard()
        self.main_session = None
        return self.attempt

    def handshake_limit(self, timeout: float, first: bool) -> float:
        """How long this handshake may take: the user's ``timeout`` the first time, and at most
        a liveness period or two on a reconnect."""
        return timeout if first else min(timeout, 2 * self.heartbeat * self.liveness)

    def answer(self, msg: Message, endpoint: str) -> Joining:
        """The main's verified answer to HELLO; raises ``HandshakeFailed`` for a refusal, and
        ``Rejected`` for an answer to another handshake of ours."""
        if msg.peer_session != self.session:
            raise Rejected("stale_session")
        try:
            body = protocol.decode_body(msg.payload)
        except Rejected as e:  # signed by the main, so not noise: a main we cannot understand
            raise HandshakeFailed(ProtocolError(f"the main's {msg.kind.name} is malformed: {e}")) from e
        if msg.kind == Kind.REFUSE:
            message = f"the main refused window {self.name!r}: {body.get('message')}"
            reason = body.get("reason")
            if reason == "name_in_use":
                raise HandshakeFailed(NameInUse(self.name))
            if reason == "unauthenticated":
                raise HandshakeFailed(AuthenticationError(message))
            raise HandshakeFailed(ProtocolError(message))
        if msg.kind != Kind.WELCOME:
            raise HandshakeFailed(ProtocolError(f"unexpected {msg.kind.name} during the handshake"))
        nonce, pub = body.get("nonce"), body.get("pub")
        if not isinstance(nonce, str) or not isinstance(pub, str):
            raise HandshakeFailed(ProtocolError("the main's WELCOME has no nonce or PUB address"))
        self.main_session = msg.session
        max_payload = body.get("max_payload")
        self.main_max = max_payload if isinstance(max_payload, int) and max_payload > 0 else None
        self.guard.new_session(MAIN_NAME, msg.session, msg.seq)
        if self.bseq_session != msg.session:  # another main (or a restart): its numbers start afresh
            self.bseq_session, self.last_bseq = msg.session, 0
        else:  # the same main again: broadcasts up to the last one seen stay refused
            self.guard.new_session(MAIN_NAME, msg.session, self.last_bseq, stream=BROADCAST_STREAM)
        return Joining(
            nonce=nonce,
            routing_id=protocol.routing_id(self.name, nonce),
            pub=_pub_endpoint(endpoint, pub),
            pub_auth=body.get("pub_auth") == "plain",
            topics=[protocol.BROADCAST_PREFIX, protocol.HEARTBEAT_TOPIC,
                    # Subscribed last: when the main sees this one, the others are in force too.
                    protocol.control_topic(self.name, nonce)],
        )

    def registered(self, now: float) -> None:
        self.connected = True
        self.failures = 0
        self.lost_at = None
        self.last_seen = now

    def admit(self, msg: Message, now: float) -> None:
        """The one check of a verified message from the main on the DEALER: raises ``Rejected``
        (``MainRestarted`` when a main that does not know us answers); else marks it heard."""
        if msg.peer_session != self.session:
            raise Rejected("stale_session")
        if msg.session != self.main_session:
            if msg.kind == Kind.ERROR and self.connected:
                raise MainRestarted()
            raise Rejected("stale_session")
        if not self.guard.accept(MAIN_NAME, msg.session, msg.seq):
            raise Rejected("replay")
        self.last_seen = now

    def admit_broadcast(self, msg: Message, now: float) -> int:
        """The one check of a verified message on the SUB; returns how many broadcasts were
        missed before it (the main numbers them without gaps)."""
        if msg.session != self.main_session:
            raise Rejected("stale_session")
        if not self.guard.accept(MAIN_NAME, msg.session, msg.seq, stream=BROADCAST_STREAM):
            raise Rejected("replay")
        # Not a sign of life on the DEALER: a main that dropped us (a partition it noticed first)
        # goes on broadcasting to our old connection but no longer answers our pings.
        self.last_pub = now
        missed = msg.seq - self.last_bseq - 1 if self.last_bseq else 0
        self.last_bseq = msg.seq
        return max(0, missed)

    def sent(self, now: float) -> None:
        self.last_sent = now

    def tick(self, now: float) -> str | None:
        """Liveness, every quarter heartbeat: ``"ping"``, ``"lost"`` (silent for ``heartbeat *
        liveness``; the node checks first that no unread input waits) or None."""
        if not self.connected:
            return None
        if now - self.last_seen > self.heartbeat * self.liveness:
            return "lost"
        quiet = now - self.last_seen >= self.heartbeat or now - self.last_sent >= self.heartbeat
        if quiet and now - self.last_ping >= self.heartbeat:  # at most one ping a heartbeat
            self.last_ping = now
            return "ping"
        return None

    def sub_silent(self, now: float) -> bool:
        """The broadcast link has been silent too long: the SUB should dial again (if no input waits).

        Beyond the main's own limit for a subscriber that stopped reading (about heartbeat *
        liveness, at least 2 s, then TCP cuts it): until then that subscriber may hold the
        main's heartbeat back from everyone (XPUB_NODROP), and a healthy link looks silent.
        """
        silent = self.heartbeat * self.liveness
        return now - self.last_pub > 2 * silent + max(2.0, silent)

    def lost(self, now: float) -> bool:
        """The main is gone; False if we were not connected (nothing to do)."""
        if not self.connected:
            return False
        self.connected = False
        self.lost_at = now
        return True

    def backoff(self, now: float) -> float | None:
        """The delay before the next handshake (jittered, exponential), or None: give up."""
        lost_for = now - (self.lost_at if self.lost_at is not None else now)
        if self.give_up_after is not None and lost_for >= self.give_up_after:
            return None
        delay = min(self.max_backoff, 0.05 * 2.0 ** min(self.failures, 64)) * self._random(0.5, 1.5)
        self.failures += 1
        return delay

    def lost_for(self, now: float) -> float:
        return now - (self.lost_at if self.lost_at is not None else now)


def _pub_endpoint(router_endpoint: str, pub: str) -> str:
    """Where to reach the main's PUB: its port, on the host we reached the ROUTER at."""
    if not (router_endpoint.startswith("tcp://") and pub.startswith("tcp://")):
        return pub
    host = router_endpoint[len("tcp://"):].rsplit(":", 1)[0]
    port = pub.rsplit(":", 1)[1]
    return f"tcp://{host}:{port}"
