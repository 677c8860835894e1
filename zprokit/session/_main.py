"""The main's side of a session: handshakes and names, the registry, admission, liveness, calls in flight."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import secrets
from dataclasses import dataclass, field
from typing import Any, Collection, Iterable, NamedTuple, NoReturn

from .. import protocol
from ..events import WindowInfo
from ..protocol import Kind, Message, Rejected, check_window_name, normalize_name
from ._guard import Cancellable, ReplayGuard

__all__ = ["Peer", "Route", "GroupJob", "least_loaded", "Welcome", "Refuse", "Contest", "HelloDecision", "Settled", "Unwelcome", "MainSession"]

_MAX_RESERVATION = 60.0  # a name is held between HELLO and REGISTER at most this long (plus a second)


@dataclass(eq=False, slots=True)  # slots: one per window, and the main keeps hundreds
class Peer:
    """A window as the main knows it, from REGISTER until it leaves."""

    info: WindowInfo
    session: bytes
    last_seen: float  # the ``now`` of its last verified message
    ident: bytes  # its DEALER's routing id (``protocol.routing_id``)
    nonce: str
    messages: int = 0
    max_size: int | None = None  # the largest message it reads (its max_payload, from HELLO)
    fd: int | None = None  # the descriptor of its connection, so a hang-up names it
    # Flow control of one-way messages (the node guards these with a lock of its own): the
    # window reads at most `credit` (its max_queued; None: it did not say) that it has not
    # handled; routed ones past that wait here, at most as many again, their ACKs held back.
    credit: int | None = None
    in_flight: int = 0
    waiting: collections.deque[tuple[str, Message]] | None = None  # made when first needed (memory)
    # Its load, for the least-loaded pick of a group call: the main's own calls to it in flight,
    # and when it was last picked (both guarded by the node's Balancer lock), and the window ->
    # window requests the main is carrying to it (counted here, as routes come and go).
    calls: int = 0
    picked: int = 0
    routed: int = 0

    @property
    def name(self) -> str:
        return self.info.name


@dataclass(slots=True)
class GroupJob:
    """A window's group call (``render_call_any``) being carried: what it takes to send it to
    another member when the one that has it leaves."""

    group: str
    retries: int  # how many more times it may go to another member
    channel: str
    payload: tuple[Any, ...]
    deadline: float  # when its caller stops waiting (the ``now`` clock; inf: never)
    tried: set[str] = field(default_factory=set)  # members that had it (and left)


@dataclass(slots=True)
class Route:
    """A request carried window -> window: whom to answer, under which id."""

    source: str
    source_msg_id: int
    target: str
    job: GroupJob | None = field(default=None, compare=False)  # a group call: how to send it on
    callee: Peer | None = field(default=None, compare=False, repr=False)  # its target, whose ``routed`` counts it


@dataclass
class Welcome:
    """Answer the HELLO with WELCOME and this ``body``; the name is held for ``nonce``."""

    name: str
    nonce: str
    body: dict[str, Any]


@dataclass
class Refuse:
    """Answer the HELLO with REFUSE (``reason``, ``message``); count it under ``counter``."""

    reason: str
    message: str
    counter: str


@dataclass
class Contest:
    """The name's holder has been quiet: ping it, and after a heartbeat call ``settle_contest``."""

    name: str


HelloDecision = Welcome | Refuse | Contest


class Settled(NamedTuple):
    """What ``settle_contest`` decided: the holder it dropped (if it stayed silent), and the
    newcomer's probe, its HELLO, and the answer to it."""

    dropped: Peer | None
    ident: bytes
    hello: Message
    decision: HelloDecision


class Unwelcome(Rejected):
    """A message from a window the main does not know (now): dropped, and when ``tell`` is set
    the sender is answered with an ERROR (``PeerLost(tell)``; ``rejoin``: re-register now)."""

    def __init__(self, reason: str, detail: str, tell: str | None = None, rejoin: bool = False) -> None:
        super().__init__(reason, detail)
        self.tell = tell
        self.rejoin = rejoin


@dataclass
class _Reservation:
    nonce: str
    expires: float
    hello: dict[str, Any]


@dataclass
class _Contest:
    ident: bytes
    hello: Message
    started: float


class MainSession:
    """The main's session rules: the handshake, the registry, admission, liveness, calls in flight.

    The handshake (around libzmq issue 4503: a ROUTER silently ignores a
    second connection that claims a routing id in use):

    1. ``hello``: a probe socket asks for a name; the answer is a ``Refuse``,
       a ``Welcome`` with a nonce (the name is held for it a while), or, when
       the name's holder has been quiet, a ``Contest``: the holder is pinged
       and ``settle_contest`` decides after a heartbeat;
    2. ``register``: the window's DEALER, under the routing id ``name NUL
       nonce``, claims the name; it is registered once ``subscribed`` sees
       its SUB's control topic too (both channels live).

    ``admit`` is the one check of every later message: the CURVE key's name,
    the sessions, the routing id, the replay guard.
    """

    def __init__(
        self,
        session: bytes,
        *,
        serializer: str,
        heartbeat: float,
        liveness: int,
        max_size: int | None = None,
        curve: bool = False,
    ) -> None:
        self.session = session
        self.serializer = serializer
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.max_size = max_size
        self.curve = curve
        self.windows: dict[str, Peer] = {}  # registered: both channels live
        self.capped: dict[str, Peer] = {}  # registered windows that announced a max_payload
        self.by_fd: dict[int, str] = {}  # registered windows by their connection's descriptor
        self.routes: dict[int, Route] = {}  # window -> window requests in flight, by our msg_id
        # Registered windows by the groups they joined, each group's in the order they registered;
        # a group with no member is not here. Read by callers' threads in single dict operations.
        self.groups: dict[str, dict[str, Peer]] = {}
        # Windows' requests being served (waiting for a handler thread, or running), so a caller
        # that gives up (CANCEL) or leaves reaches them; the I/O thread adds, the end of the call pops.
        self.serving: dict[tuple[bytes, int], Cancellable] = {}  # by (the window's session, its msg_id)
        self._route_ids: dict[tuple[str, int], int] = {}  # (source, its msg_id) -> our msg_id
        self._joining: dict[str, Peer] = {}  # REGISTER seen, the control subscription not yet
        self._contests: dict[str, _Contest] = {}
        self._reservations: dict[str, _Reservation] = {}
        self._subscriptions: set[bytes] = set()  # control topics of handshakes under way, seen
        self._lapsed: list[tuple[str, str]] = []  # (name, nonce) of reservations that lapsed, for tick
        self._awaiting_sub: dict[bytes, str] = {}
        self._guard = ReplayGuard()
        self._ids = itertools.count(1)  # our message ids: requests and routes (any thread)
        self._seq = itertools.count(1)  # our sequence numbers (drawn under the ROUTER's lock)

    def next_id(self) -> int:
        return next(self._ids)

    def next_seq(self) -> int:
        """The next sequence number: the caller numbers in send order (under its socket's lock)."""
        return next(self._seq)

    # --- the handshake ---------------------------------------------------------------

    def hello(self, ident: bytes, msg: Message, now: float, user: str | None = None) -> HelloDecision:
        """A verified HELLO from a probe ``ident``; ``user``: the CURVE key's allowed name."""
        if not self._guard.first_hello(msg.session):  # every handshake has a new session
            raise Rejected("replay", "a HELLO seen before")
        if self.curve:
            name = normalize_name(protocol.decode_body(msg.payload).get("name"))
            if name != user:
                return Refuse("unauthenticated", f"this CURVE key is on the allow-list as {user!r}, not {name!r}",
                              "unauthenticated")
        return self._decide(ident, msg, now)

    def _decide(self, ident: bytes, msg: Message, now: float, holder_answered: bool = False) -> HelloDecision:
        body = protocol.decode_body(msg.payload)
        name = normalize_name(body.get("name"))
        int_field(body, "pid")  # checked now: a bad one must not fail later, in REGISTER
        size_field(body, "max_payload")
        size_field(body, "max_queued")
        groups_field(body)
        problem = check_window_name(name)
        if problem:
            return Refuse("bad_name", f"{problem}: {name!r}", "refused_bad_name")
        if body.get("serializer") != self.serializer:
            return Refuse("serializer", f"the main uses the {self.serializer!r} serializer and the window "
                                        f"{body.get('serializer')!r}; give both the same serializer=",
                          "refused_serializer")
        holder = self.windows.get(name)
        if holder is not None:
            if holder_answered or name in self._contests or now - holder.last_seen < self.heartbeat / 2:
                return Refuse("name_in_use", name, "refused_name_in_use")
            # Quiet for a while: maybe dead (a restart of the same window, a half-open
            # connection). The holder is asked; the newcomer is answered once we know.
            self._contests[name] = _Contest(ident, msg, now)
            return Contest(name)
        held = self._reservations.get(name)
        if (held is not None and held.expires > now) or name in self._joining:
            return Refuse("name_in_use", name, "refused_name_in_use")
        if held is not None:  # lapsed, not yet swept: its login goes now, not never
            self._lapse(name, held.nonce)
        nonce = secrets.token_hex(16)  # also the secret half of the window's routing id
        self._reservations[name] = _Reservation(nonce, now + _reservation_ttl(body), body)
        return Welcome(name, nonce, {"nonce": nonce, "serializer": self.serializer, "max_payload": self.max_size})

    def settle_contest(self, name: str, now: float) -> Settled:
        """A heartbeat after a ``Contest`` (or at once, when the holder was unreachable): the
        holder is dropped if it stayed silent, and the newcomer's HELLO is decided again."""
        contest = self._contests.pop(name)
        holder = self.windows.get(name)
        answered = holder is not None and holder.last_seen >= contest.started
        dropped = None if holder is None or answered else self.drop(name)
        # A holder that answered keeps its name; without the flag a holder quiet for more than
        # heartbeat/2 since its pong would be pinged again, and again, until the newcomer timed out.
        decision = self._decide(contest.ident, contest.hello, now, holder_answered=answered)
        return Settled(dropped, contest.ident, contest.hello, decision)

    def register(self, ident: bytes, msg: Message, now: float, *, user: str | None = None, address: str = "",
                 fd: int | None = None, wall: float = 0.0) -> Peer | None:
        """A verified REGISTER (``wall``: ``time.time()``, for ``WindowInfo.connected_since``);
        returns the window if it is registered now (its control subscription was seen first),
        else None (``subscribed`` completes it)."""
        self._check_sender(ident, msg, user)
        name, nonce = protocol.split_routing_id(ident)
        body = protocol.decode_body(msg.payload)
        held = self._reservations.get(name)
        if held is None or held.nonce != body.get("nonce") or msg.source != name or nonce != held.nonce:
            raise Rejected("unregistered", f"REGISTER for {name!r} without a valid reservation")
        if not self._guard.new_session(name, msg.session, msg.seq):
            raise Rejected("replay", f"REGISTER of a retired session of {name!r}")
        del self._reservations[name]
        hello = held.hello
        info = WindowInfo(
            name=name,
            host=str(hello.get("host", "")),
            pid=int_field(hello, "pid"),
            connected_since=wall,
            address=address,
            serializer=self.serializer,
            session=msg.session.hex(),
            ready=hello.get("ready", True) is not False,
            groups=groups_field(hello),
        )
        self._joining[name] = Peer(info, msg.session, now, ident, held.nonce, max_size=size_field(hello, "max_payload"),
                                   fd=fd, credit=size_field(hello, "max_queued"))
        topic = protocol.control_topic(name, held.nonce)
        if topic in self._subscriptions:
            self._subscriptions.discard(topic)
            return self._complete(name)
        self._awaiting_sub[topic] = name
        return None

    def subscribed(self, topic: bytes) -> Peer | None:
        """The PUB saw a subscription to ``topic``; returns a window whose registration it completes."""
        name = self._awaiting_sub.pop(topic, None)
        joining = None if name is None else self._joining.get(name)
        if joining is not None and topic == protocol.control_topic(joining.name, joining.nonce):
            return self._complete(joining.name)
        if self._is_reserved_topic(topic):
            # Only the control topics of handshakes under way: anyone can subscribe to anything.
            self._subscriptions.add(topic)
        return None

    def unsubscribed(self, topic: bytes) -> None:
        self._subscriptions.discard(topic)

    def _is_reserved_topic(self, topic: bytes) -> bool:
        parsed = protocol.split_control_topic(topic)
        held = None if parsed is None else self._reservations.get(parsed[0])
        return held is not None and parsed is not None and held.nonce == parsed[1]

    def _complete(self, name: str) -> Peer:
        peer = self._joining.pop(name)
        self.windows[name] = peer
        if peer.fd is not None:
            self.by_fd[peer.fd] = name
        if peer.max_size is not None:
            self.capped[name] = peer
        for group in peer.info.groups:
            self.groups.setdefault(group, {})[name] = peer
        return peer

    # --- registered windows ----------------------------------------------------------

    def admit(self, ident: bytes, msg: Message, now: float, user: str | None = None) -> Peer:
        """The one check of a verified message from a window (HELLO and REGISTER apart):
        raises ``Rejected`` (or ``Unwelcome``), else returns its sender, marked as heard now."""
        if self.curve or msg.peer_session != self.session:
            self._check_sender(ident, msg, user)
        # The sender is the window whose routing id this is: its name (in the routing id) is the
        # source the message claims, its session the registered one. Looked up by the claimed
        # source, and the whole routing id compared (it holds the name), so no decoding here.
        peer = self.windows.get(msg.source)
        if peer is None or peer.ident != ident or peer.session != msg.session:
            self._unregistered(ident, msg)
        if not self._guard.accept(peer.name, msg.session, msg.seq):
            raise Rejected("replay", peer.name)
        peer.last_seen = now
        peer.messages += 1
        return peer

    def _unregistered(self, ident: bytes, msg: Message) -> NoReturn:
        """Not from the registered window its routing id names. A window we dropped (silent too
        long: a partition, a freeze) that still talks to us on our session is told, so it
        rejoins now, not after its own liveness timeout."""
        name = protocol.split_routing_id(ident)[0]
        peer = self.windows.get(name)
        told = msg.kind in (Kind.PING, Kind.REQUEST, Kind.MESSAGE, Kind.BATCH) and (peer is None or peer.ident != ident)
        raise Unwelcome("unregistered", name, "the main had dropped this window" if told else None, rejoin=True)

    def _check_sender(self, ident: bytes, msg: Message, user: str | None) -> None:
        """Whose key sent it (under CURVE) and to which main: the checks before any name is trusted."""
        if self.curve and (user is None or protocol.routing_name(ident) != user.encode()):
            # The name a message claims is its routing id's; CURVE's User-Id says whose key sent it.
            raise Rejected("unauthenticated", f"routing id {ident[:64]!r} from a CURVE key allowed as {user!r}")
        if msg.peer_session != self.session:
            kind = msg.kind
            told = (kind == Kind.REQUEST or kind == Kind.PING or kind == Kind.BATCH
                    or (kind == Kind.MESSAGE and bool(msg.target)))
            # A window of an earlier main (or that we forgot): told, so it does not wait.
            raise Unwelcome("stale_session", kind.name,
                            "the main does not know this window; re-register" if told else None)

    def ready(self, peer: Peer) -> bool:
        """The window's callbacks are registered (READY); True if that is news."""
        if peer.info.ready:
            return False
        peer.info = dataclasses.replace(peer.info, ready=True)
        return True

    def tick(self, now: float) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """Liveness, every quarter heartbeat: ``(windows to drop and why, (name, nonce) of
        handshakes that lapsed: their PUB logins go)``. Failed joins are forgotten here."""
        limit = self.heartbeat * self.liveness
        silent = [(name, f"silent for {now - peer.last_seen:.1f} s")
                  for name, peer in self.windows.items() if now - peer.last_seen > limit]
        lapsed = []
        for name, peer in list(self._joining.items()):
            if now - peer.last_seen > max(limit, 10.0):  # never subscribed: a failed join
                del self._joining[name]
                self._guard.forget(name)
                self._awaiting_sub.pop(protocol.control_topic(name, peer.nonce), None)
                lapsed.append((name, peer.nonce))
        for name in [n for n, r in self._reservations.items() if r.expires < now]:
            self._lapse(name, self._reservations.pop(name).nonce)
        lapsed += self._lapsed
        self._lapsed = []
        return silent, lapsed

    def _lapse(self, name: str, nonce: str) -> None:
        """A handshake's reservation lapsed: its control topic is forgotten, and its login is
        reported by the next ``tick``."""
        self._subscriptions.discard(protocol.control_topic(name, nonce))
        self._lapsed.append((name, nonce))

    def drop(self, name: str) -> Peer | None:
        """Remove window ``name``: its session retired, its queued calls cancelled. The node
        then fails what is pending on it (``routes_to`` names the routed calls to answer)."""
        peer = self.windows.pop(name, None)
        if peer is None:
            return None
        if peer.fd is not None and self.by_fd.get(peer.fd) == name:
            del self.by_fd[peer.fd]
        self.capped.pop(name, None)
        self._leave_groups(peer)
        self._guard.forget(name)
        for topic in [t for t, n in self._awaiting_sub.items() if n == name]:
            del self._awaiting_sub[topic]
        # list(...) copies in one step: handler threads pop from the table meanwhile
        for key, call in list(self.serving.items()):  # nobody to answer: stopped
            if key[0] == peer.session and call.cancel():
                self.serving.pop(key, None)
        return peer

    def _leave_groups(self, peer: Peer) -> None:
        for group in peer.info.groups:
            members = self.groups.get(group)
            if members is not None and members.get(peer.name) is peer:
                del members[peer.name]
                if not members:  # no member: no entry
                    del self.groups[group]

    def members(self, group: str | None) -> list[Peer]:
        """The registered members of ``group`` (every window for None), in the order they registered:
        a copy, made in one step (any thread)."""
        if group is None:
            return list(self.windows.values())
        return list(self.groups.get(group, {}).values())

    def routes_to(self, name: str) -> tuple[list[Route], list[tuple[int, Route]]]:
        """Forget the routes of window ``name`` (which left): ``(those it was to answer, so their
        callers are told; (our msg_id, route) of those it had asked, so their callees are told)``."""
        lost, orphaned = [], []
        for msg_id, route in list(self.routes.items()):
            if route.target == name or route.source == name:
                self.pop_route(msg_id)
                if route.target == name:
                    lost.append(route)
                else:
                    orphaned.append((msg_id, route))
        return lost, orphaned

    def describe(self, now: float) -> list[dict[str, Any]]:
        """Every registered window, for ``zprokit windows``; ``now``: ``time.time()``."""
        return [{**dataclasses.asdict(w.info), "uptime": now - w.info.connected_since, "messages": w.messages,
                 "session": None} for w in list(self.windows.values())]

    def clear(self) -> None:
        """The main closed: it has no windows."""
        self.windows.clear()
        self._joining.clear()
        self.capped.clear()
        self.by_fd.clear()
        self.groups.clear()

    # --- calls in flight -----------------------------------------------------------

    def add_route(self, source: str, source_msg_id: int, target: str, job: GroupJob | None = None, *,
                  msg_id: int | None = None) -> int:
        """Carry request ``source_msg_id`` of ``source`` to window ``target`` (``job``: a group
        call's, to send it on if the target leaves) under our ``msg_id`` (default: a new one);
        returns it. It counts in the target's load until ``pop_route``."""
        if msg_id is None:
            msg_id = self.next_id()
        callee = self.windows.get(target)
        if callee is not None:
            callee.routed += 1
        self.routes[msg_id] = Route(source, source_msg_id, target, job, callee)
        self._route_ids[(source, source_msg_id)] = msg_id
        return msg_id

    def pop_route(self, msg_id: int) -> Route | None:
        """Forget the routed request ``msg_id`` (answered, cancelled, or an end gone)."""
        route = self.routes.pop(msg_id, None)
        if route is not None:
            self._route_ids.pop((route.source, route.source_msg_id), None)
            if route.callee is not None:
                route.callee.routed -= 1
        return route

    def answered_route(self, msg_id: int, by: str) -> Route | None:
        """The route a REPLY or ERROR ``msg_id`` from window ``by`` answers, forgotten; None if none."""
        route = self.routes.get(msg_id)
        if route is None or route.target != by:
            return None
        return self.pop_route(msg_id)

    def route_of(self, source: str, source_msg_id: int) -> tuple[int, Route] | None:
        """``(our msg_id, the route)`` of ``source``'s routed call ``source_msg_id``, kept."""
        msg_id = self._route_ids.get((source, source_msg_id))
        route = None if msg_id is None else self.routes.get(msg_id)
        return None if route is None or msg_id is None else (msg_id, route)

    def streaming_route(self, msg_id: int, by: str) -> Route | None:
        """The route an ITEM ``msg_id`` from window ``by`` belongs to (kept: more items follow)."""
        route = self.routes.get(msg_id)
        return route if route is not None and route.target == by else None

    def cancel_route(self, source: str, source_msg_id: int) -> tuple[int, Route] | None:
        """``source`` gave up its routed request: ``(our msg_id, the route)`` to cancel at the target."""
        msg_id = self._route_ids.get((source, source_msg_id))
        route = None if msg_id is None else self.pop_route(msg_id)
        return None if route is None or msg_id is None else (msg_id, route)

    def cancel_served(self, peer: Peer, msg_id: int) -> None:
        """Window ``peer`` gave up its request ``msg_id``: not started, it never starts; running,
        its handler is told. A call already answered is not here: nothing happens."""
        call = self.serving.get((peer.session, msg_id))
        if call is not None and call.cancel():
            self.serving.pop((peer.session, msg_id), None)


def least_loaded(members: Iterable[Peer], exclude: Collection[str] = ()) -> Peer | None:
    """The member (not named in ``exclude``) with the fewest calls in flight, the main's own and
    routed; among equals the one picked longest ago, so equals take calls in turn. None if none.
    A member that is not ready yet (a created window whose target has not registered its
    callbacks) is taken only when no ready one is left: it would answer ``NoHandler``."""
    best, best_key = None, (True, 0, 0)
    for peer in members:
        if peer.name in exclude:
            continue
        key = (not peer.info.ready, peer.calls + peer.routed, peer.picked)
        if best is None or key < best_key:
            best, best_key = peer, key
    return best


def groups_field(body: dict[str, Any]) -> tuple[str, ...]:
    """HELLO's ``groups``: a list of group names (none: a window that predates groups)."""
    value = body.get("groups", [])
    problem = protocol.check_groups(value) if isinstance(value, list) else "groups is not a list"
    if problem:
        raise Rejected("malformed", problem)
    return tuple(dict.fromkeys(normalize_name(group) for group in value))


def int_field(body: dict[str, Any], key: str) -> int:
    value = body.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool):
        raise Rejected("malformed", f"{key} is not an integer")
    return value


def size_field(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise Rejected("malformed", f"{key} is not a positive integer")
    return value


def _reservation_ttl(hello: dict[str, Any]) -> float:
    """How long a name stays reserved for a window between HELLO and REGISTER."""
    timeout = hello.get("timeout", 10.0)
    if not isinstance(timeout, (int, float)) or not timeout > 0:
        raise Rejected("malformed", "HELLO timeout is not a positive number")
    return min(float(timeout), _MAX_RESERVATION) + 1.0
