"""The session rules without sockets: a MainSession and a WindowSession talk through
``protocol.pack``/``unpack`` with a shared key, as the nodes would, with ``now`` passed in.

No ZeroMQ, no threads, no clock: every time is a fixed float, so each rule (the
handshake, name contests, admission, replay, liveness, calls in flight, backoff)
is checked exactly at its edges.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import subprocess
import sys

import pytest

from zprokit import protocol
from zprokit.errors import AuthenticationError, NameInUse, ProtocolError
from zprokit.protocol import (
    BROADCAST_PREFIX, HEARTBEAT_TOPIC, MAX_NAME_BYTES, NO_SESSION, Kind, Message, Rejected, Signer, control_topic,
    encode_body, pack, routing_id, unpack,
)
from zprokit.session import (
    MAIN_NAME, Contest, HandshakeFailed, MainRestarted, MainSession, Peer, Refuse, ReplayGuard, Route,
    Unwelcome, Welcome, WindowSession,
)

pytestmark = pytest.mark.timeout(10)

SIGNER = Signer(b"session test key")
HB, LIVENESS = 1.0, 3  # a window silent for more than HB * LIVENESS = 3 s is dropped
T0 = 1000.0  # the first "now" of every test
ENDPOINT = "tcp://10.0.0.1:5555"  # where windows reach the main's ROUTER
PUB = "tcp://0.0.0.0:5556"  # the PUB endpoint the main's node puts in WELCOME
S1, S2, S3 = (bytes([i]) * 16 for i in (1, 2, 3))


def received(frames: list, topic: bool = False) -> Message:
    """The frames as a receiver gets them (fresh bytes), verified; a PUB topic frame taken off and passed."""
    frames = [bytes(f) for f in frames]
    if topic:
        return unpack(SIGNER, frames[1:], topic=frames[0])
    return unpack(SIGNER, frames)


class MainNode:
    """A MainSession and the little its node adds: send numbering, the WELCOME and REFUSE bodies."""

    def __init__(self, **options) -> None:
        self.session = MainSession(os.urandom(16), serializer="pickle", heartbeat=HB, liveness=LIVENESS, **options)
        self._bseq = itertools.count(1)  # the PUB's numbers (the ROUTER's are the session's: next_seq)

    def send(self, kind: Kind, peer_session: bytes, target: str = "", msg_id: int = 0, body: dict | None = None,
             session: bytes | None = None) -> Message:
        payload = [encode_body(body)] if body is not None else []
        return received(pack(SIGNER, kind, msg_id, self.session.next_seq(), session or self.session.session,
                             peer_session, MAIN_NAME, target, "", payload))

    def answer(self, hello: Message, decision: Welcome | Refuse) -> Message:
        if isinstance(decision, Welcome):
            body = {**decision.body, "pub": PUB, "pub_auth": None}
            return self.send(Kind.WELCOME, hello.session, decision.name, hello.msg_id, body)
        return self.send(Kind.REFUSE, hello.session, msg_id=hello.msg_id,
                         body={"reason": decision.reason, "message": decision.message})

    def broadcast(self, seq: int | None = None, session: bytes | None = None) -> Message:
        topic = BROADCAST_PREFIX + b"news"
        return received(pack(SIGNER, Kind.BROADCAST, 0, next(self._bseq) if seq is None else seq,
                             session or self.session.session, NO_SESSION, "", "", "news", [b"x"], topic), topic=True)

    def heartbeat(self) -> Message:
        return received(pack(SIGNER, Kind.PING, 0, next(self._bseq), self.session.session, topic=HEARTBEAT_TOPIC),
                        topic=True)


class WindowNode:
    """A WindowSession and the little its node adds: the probe's routing id, the HELLO body."""

    def __init__(self, name: str = "w", **options) -> None:
        self.name = name
        self.session = WindowSession(name, heartbeat=HB, liveness=LIVENESS, **options)
        self.probe = b"\xff" + os.urandom(15)  # never UTF-8: never a name
        self.ident = b""  # the DEALER's routing id, from WELCOME
        self.last_hello: Message | None = None

    def hello(self, **fields) -> Message:
        """A new handshake's HELLO; ``fields`` replace those of the body (``name`` too)."""
        ws = self.session
        ws.start_handshake()
        body = {"name": self.name, "pid": 4242, "host": "box", "serializer": "pickle",
                "timeout": 10.0, "max_payload": None, "ready": True, "max_queued": 1000, **fields}
        self.last_hello = received(pack(SIGNER, Kind.HELLO, 0, ws.next_seq(), ws.session, NO_SESSION, self.name,
                                        payload=[protocol.encode_body(body)]))
        return self.last_hello

    def send(self, kind: Kind, msg_id: int = 0, target: str = "", body: dict | None = None,
             session: bytes | None = None, peer_session: bytes | None = None, source: str | None = None) -> Message:
        ws = self.session
        payload = [encode_body(body)] if body is not None else []
        return received(pack(SIGNER, kind, msg_id, ws.next_seq(), session or ws.session,
                             ws.main_session if peer_session is None else peer_session,
                             self.name if source is None else source, target, "", payload))


def welcome(main: MainNode, win: WindowNode, now: float = T0, user: str | None = None, **hello_fields):
    """HELLO, WELCOME, and the window's answer to it: ``(its Joining, the REGISTER it sends)``;
    ``user``: the name the probe's CURVE key is allowed."""
    hello = win.hello(**hello_fields)
    decision = main.session.hello(win.probe, hello, now, user)
    assert isinstance(decision, Welcome), decision
    joining = win.session.answer(main.answer(hello, decision), ENDPOINT)
    win.ident = joining.routing_id
    return joining, win.send(Kind.REGISTER, body={"nonce": joining.nonce})


def join(main: MainNode, win: WindowNode, now: float = T0, user: str | None = None, **hello_fields) -> Peer:
    """A whole handshake: HELLO, WELCOME, REGISTER, the control subscription, REGISTERED."""
    joining, register = welcome(main, win, now, user, **hello_fields)
    assert main.session.register(win.ident, register, now, user=user) is None
    peer = main.session.subscribed(joining.topics[-1])
    assert peer is not None
    win.session.admit(main.send(Kind.REGISTERED, peer.session, win.name), now)
    win.session.registered(now)
    return peer


def rejected(call, *args) -> Rejected:
    with pytest.raises(Rejected) as info:
        call(*args)
    return info.value


@pytest.fixture
def main() -> MainNode:
    return MainNode()


@pytest.fixture
def win() -> WindowNode:
    return WindowNode("w")


# ============================================================================ the handshake

def test_a_window_is_registered_once_register_and_its_control_subscription_are_both_seen(main, win):
    joining, register = welcome(main, win)
    assert main.session.register(win.ident, register, T0, address="10.0.0.2", wall=1.7e9) is None  # SUB not live
    assert "w" not in main.session.windows
    peer = main.session.subscribed(joining.topics[-1])
    assert peer is not None and main.session.windows == {"w": peer}
    assert (peer.name, peer.session, peer.ident, peer.nonce) == ("w", win.session.session, win.ident, joining.nonce)
    info = peer.info
    assert (info.pid, info.host, info.address, info.connected_since, info.serializer, info.session, info.ready) == (
        4242, "box", "10.0.0.2", 1.7e9, "pickle", win.session.session.hex(), True)
    assert (peer.credit, peer.max_size, peer.last_seen) == (1000, None, T0)


def test_a_control_subscription_seen_first_completes_the_registration_at_register(main, win):
    joining, register = welcome(main, win)
    assert main.session.subscribed(joining.topics[-1]) is None
    peer = main.session.register(win.ident, register, T0)
    assert peer is not None and main.session.windows == {"w": peer}


def test_a_subscription_to_a_control_topic_of_no_handshake_completes_nothing(main, win):
    joining, register = welcome(main, win)
    assert main.session.subscribed(control_topic("w", "0" * 32)) is None  # anyone can subscribe to anything
    assert main.session.register(win.ident, register, T0) is None
    assert main.session.subscribed(joining.topics[-1]) is not None


def test_welcome_tells_the_window_where_and_how_to_join(main, win):
    joining, _ = welcome(main, win)
    assert joining.routing_id == routing_id("w", joining.nonce) and len(joining.nonce) == 32
    assert joining.topics == [BROADCAST_PREFIX, HEARTBEAT_TOPIC, control_topic("w", joining.nonce)]
    assert joining.pub == "tcp://10.0.0.1:5556"  # the PUB's port, on the host the window reached
    assert joining.pub_auth is False
    assert win.session.main_session == main.session.session


def test_the_main_tells_its_max_payload_in_welcome():
    main, win = MainNode(max_size=4096), WindowNode()
    welcome(main, win)
    assert win.session.main_max == 4096


def test_a_registered_window_and_the_main_admit_each_others_messages(main, win):
    peer = join(main, win)
    assert win.session.connected
    request = win.send(Kind.REQUEST, msg_id=1)
    assert main.session.admit(win.ident, request, T0 + 1) is peer
    assert (peer.last_seen, peer.messages) == (T0 + 1, 1)
    win.session.admit(main.send(Kind.REPLY, win.session.session, "w", msg_id=1), T0 + 1)
    assert win.session.last_seen == T0 + 1


def test_a_name_is_compared_in_nfc(main):
    nfd = "cafe\u0301"
    decision = main.session.hello(b"\xffprobe", WindowNode(nfd).hello(), T0)
    assert isinstance(decision, Welcome) and decision.name == "caf\u00e9"


def test_a_window_that_announced_max_payload_and_a_descriptor_is_listed_for_them(main, win):
    joining, register = welcome(main, win, max_payload=2048)
    main.session.register(win.ident, register, T0, fd=7)
    peer = main.session.subscribed(joining.topics[-1])
    assert peer.max_size == 2048
    assert main.session.capped == {"w": peer} and main.session.by_fd == {7: "w"}


def test_ready_is_news_once(main, win):
    peer = join(main, win, ready=False)
    assert peer.info.ready is False
    assert main.session.ready(peer) is True and peer.info.ready is True
    assert main.session.ready(peer) is False


# --- refusals -----------------------------------------------------------------------------

def refused(main: MainNode, win: WindowNode, decision) -> BaseException:
    """The error the window's user sees for the main's REFUSE."""
    assert isinstance(decision, Refuse), decision
    with pytest.raises(HandshakeFailed) as info:
        win.session.answer(main.answer(win.last_hello, decision), ENDPOINT)
    return info.value.error


def ask(main: MainNode, win: WindowNode, now: float = T0, user: str | None = None, **fields):
    """The main's decision on a new HELLO of ``win`` (its body's ``fields`` replaced)."""
    return main.session.hello(win.probe, win.hello(**fields), now, user)


def test_a_name_held_by_a_live_window_is_refused_as_name_in_use(main, win):
    join(main, win)
    other = WindowNode("w")
    decision = ask(main, other, T0 + HB / 4)  # the holder was heard less than half a heartbeat ago
    assert (decision.reason, decision.counter) == ("name_in_use", "refused_name_in_use")
    error = refused(main, other, decision)
    assert isinstance(error, NameInUse) and error.name == "w"


def test_a_name_reserved_for_a_handshake_under_way_is_refused_until_the_reservation_lapses(main, win):
    welcome(main, win)  # timeout 10 s: reserved until T0 + 11
    other = WindowNode("w")
    assert ask(main, other, T0 + 10.9).reason == "name_in_use"
    assert isinstance(ask(main, other, T0 + 11.1), Welcome)


def test_a_quiet_holder_is_contested_and_keeps_its_name_if_it_answers(main, win):
    peer = join(main, win)
    newcomer = WindowNode("w")
    assert ask(main, newcomer, T0 + HB) == Contest("w")  # quiet for half a heartbeat or more: pinged
    assert ask(main, WindowNode("w"), T0 + HB).reason == "name_in_use"  # one contest at a time
    main.session.admit(win.ident, win.send(Kind.PONG), T0 + 1.5 * HB)  # the holder answers the ping
    settled = main.session.settle_contest("w", T0 + 2 * HB)
    assert settled.dropped is None and settled.ident == newcomer.probe and settled.hello is newcomer.last_hello
    assert isinstance(refused(main, newcomer, settled.decision), NameInUse)
    assert main.session.windows == {"w": peer}


def test_a_quiet_holder_that_stays_silent_loses_its_name_to_the_newcomer(main, win):
    peer = join(main, win)
    newcomer = WindowNode("w")
    assert ask(main, newcomer, T0 + HB) == Contest("w")
    settled = main.session.settle_contest("w", T0 + 2 * HB)
    assert settled.dropped is peer and settled.ident == newcomer.probe and "w" not in main.session.windows
    assert isinstance(settled.decision, Welcome)
    joining = newcomer.session.answer(main.answer(settled.hello, settled.decision), ENDPOINT)
    assert joining.routing_id != win.ident
    with pytest.raises(Unwelcome) as info:  # the old holder's session is retired
        main.session.admit(win.ident, win.send(Kind.PING), T0 + 2 * HB)
    assert info.value.reason == "unregistered"


@pytest.mark.parametrize("name", ["", "a\0b", "x" * (MAX_NAME_BYTES + 1), "\ud800", 7, None])
def test_a_name_a_window_cannot_have_is_refused_as_bad_name(main, name):
    win = WindowNode("w")
    decision = ask(main, win, name=name)
    assert (decision.reason, decision.counter) == ("bad_name", "refused_bad_name")
    error = refused(main, win, decision)
    assert type(error) is ProtocolError and "window name" in str(error)


def test_a_serializer_mismatch_is_refused_and_says_which(main, win):
    decision = ask(main, win, serializer="json")
    assert (decision.reason, decision.counter) == ("serializer", "refused_serializer")
    error = refused(main, win, decision)
    assert type(error) is ProtocolError and "'pickle'" in str(error) and "'json'" in str(error)


def test_under_curve_a_key_may_only_ask_for_the_name_it_is_allowed(win):
    main = MainNode(curve=True)
    decision = ask(main, win, user="alice")
    assert (decision.reason, decision.counter) == ("unauthenticated", "unauthenticated")
    error = refused(main, win, decision)
    assert isinstance(error, AuthenticationError) and "'alice'" in str(error)
    assert isinstance(ask(main, WindowNode("alice"), user="alice"), Welcome)


def test_under_curve_every_later_message_must_come_from_its_names_key():
    main, bob = MainNode(curve=True), WindowNode("bob")
    peer = join(main, bob, user="bob")
    assert main.session.admit(bob.ident, bob.send(Kind.PING), T0, user="bob") is peer
    for user in ("alice", None):
        assert rejected(main.session.admit, bob.ident, bob.send(Kind.PING), T0, user).reason == "unauthenticated"


def test_a_replayed_hello_is_rejected(main, win):
    hello = win.hello()
    assert isinstance(main.session.hello(win.probe, hello, T0), Welcome)
    with pytest.raises(Rejected) as info:
        main.session.hello(win.probe, hello, T0 + 60)  # even after its reservation lapsed
    assert info.value.reason == "replay"


@pytest.mark.parametrize("field, value", [
    ("pid", "4242"), ("pid", True), ("max_payload", 0), ("max_payload", "big"), ("timeout", 0), ("timeout", "x"),
])
def test_a_hello_with_a_malformed_field_is_rejected_at_once(main, win, field, value):
    with pytest.raises(Rejected) as info:
        ask(main, win, **{field: value})
    assert info.value.reason == "malformed"


@pytest.mark.parametrize("value", [0, -1, "1000", True])
def test_a_hello_with_a_malformed_max_queued_is_rejected_at_once(main, win, value):
    with pytest.raises(Rejected) as info:
        ask(main, win, max_queued=value)
    assert info.value.reason == "malformed"


# --- REGISTER -----------------------------------------------------------------------------

def test_register_without_a_reservation_is_rejected(main, win):
    win.session.start_handshake()
    win.ident = routing_id("w", "ab" * 16)
    register = win.send(Kind.REGISTER, body={"nonce": "ab" * 16}, peer_session=main.session.session)
    assert rejected(main.session.register, win.ident, register, T0).reason == "unregistered"


def test_register_with_a_wrong_nonce_or_name_is_rejected(main, win):
    joining, _ = welcome(main, win)
    wrong = "0" * 32
    cases = [
        (routing_id("w", wrong), win.send(Kind.REGISTER, body={"nonce": joining.nonce})),  # routing id's nonce
        (win.ident, win.send(Kind.REGISTER, body={"nonce": wrong})),  # the body's nonce
        (win.ident, win.send(Kind.REGISTER, body={})),
        (win.ident, win.send(Kind.REGISTER, body={"nonce": joining.nonce}, source="v")),  # the source
    ]
    for ident, register in cases:
        assert rejected(main.session.register, ident, register, T0).reason == "unregistered"
    # The reservation is still there for the right REGISTER.
    assert main.session.register(win.ident, win.send(Kind.REGISTER, body={"nonce": joining.nonce}), T0) is None


def test_register_of_a_retired_session_is_rejected(main, win):
    join(main, win)
    retired = win.session.session
    main.session.drop("w")
    joining, _ = welcome(main, win, T0 + 1)  # a new handshake: a new session...
    replayed = win.send(Kind.REGISTER, body={"nonce": joining.nonce}, session=retired)  # ...but the old one
    assert rejected(main.session.register, win.ident, replayed, T0 + 1).reason == "replay"


def test_register_addressed_to_another_main_session_is_rejected(main, win):
    joining, _ = welcome(main, win)
    register = win.send(Kind.REGISTER, body={"nonce": joining.nonce}, peer_session=S3)
    assert rejected(main.session.register, win.ident, register, T0).reason == "stale_session"


def test_under_curve_register_must_come_from_its_names_key():
    main, bob = MainNode(curve=True), WindowNode("bob")
    joining, register = welcome(main, bob, user="bob")
    for user in ("alice", None):
        error = rejected(lambda: main.session.register(bob.ident, register, T0, user=user))
        assert error.reason == "unauthenticated"
    assert main.session.register(bob.ident, register, T0, user="bob") is None


def test_a_name_whose_register_was_seen_is_not_given_to_another_window(main, win):
    _, register = welcome(main, win)
    main.session.register(win.ident, register, T0)  # joining: the subscription not seen yet
    assert ask(main, WindowNode("w"), T0 + 0.1).reason == "name_in_use"


def test_only_a_windows_own_control_subscription_completes_its_registration(main, win):
    joining, register = welcome(main, win)
    main.session.register(win.ident, register, T0)  # its SUB never subscribes in time...
    main.session.tick(T0 + 10.5)  # ...and the failed join is forgotten
    second = WindowNode("w")
    second_joining, second_register = welcome(main, second, T0 + 11)
    assert main.session.register(second.ident, second_register, T0 + 11) is None
    late = main.session.subscribed(joining.topics[-1])  # the first window's subscription, late
    assert late is None and "w" not in main.session.windows
    assert main.session.subscribed(second_joining.topics[-1]).ident == second.ident


# ============================================================================ admission

@pytest.mark.parametrize("kind, told", [
    (Kind.REQUEST, True), (Kind.PING, True), (Kind.PONG, False), (Kind.REPLY, False), (Kind.MESSAGE, False),
])
def test_a_message_to_another_main_session_is_unwelcome_and_only_a_waiting_sender_is_told(main, win, kind, told):
    join(main, win)
    error = rejected(main.session.admit, win.ident, win.send(kind, peer_session=S3), T0)
    assert isinstance(error, Unwelcome) and error.reason == "stale_session"
    assert (error.tell is not None) is told and error.rejoin is False


def test_a_routed_message_to_another_main_session_is_told_too(main, win):
    join(main, win)
    error = rejected(main.session.admit, win.ident, win.send(Kind.MESSAGE, target="x", peer_session=S3), T0)
    assert error.tell is not None


@pytest.mark.parametrize("kind, told", [
    (Kind.REQUEST, True), (Kind.PING, True), (Kind.MESSAGE, True), (Kind.PONG, False), (Kind.REPLY, False),
])
def test_a_message_from_an_unregistered_window_is_unwelcome_and_asks_it_to_rejoin(main, kind, told):
    stranger = WindowNode("stranger")
    stranger.session.start_handshake()
    message = stranger.send(kind, peer_session=main.session.session)
    error = rejected(main.session.admit, routing_id("stranger", "ab" * 16), message, T0)
    assert isinstance(error, Unwelcome) and error.reason == "unregistered" and error.rejoin is True
    assert (error.tell is not None) is told


def test_a_message_under_another_routing_id_is_unwelcome(main, win):
    join(main, win)
    error = rejected(main.session.admit, routing_id("w", "0" * 32), win.send(Kind.REQUEST), T0)
    assert isinstance(error, Unwelcome) and error.reason == "unregistered" and error.tell is not None


def test_a_message_with_another_session_or_source_is_unwelcome(main, win):
    join(main, win)
    for msg in (win.send(Kind.REQUEST, session=S3), win.send(Kind.REQUEST, source="v")):
        error = rejected(main.session.admit, win.ident, msg, T0)
        assert isinstance(error, Unwelcome) and error.reason == "unregistered"


def test_a_replayed_or_reordered_message_is_rejected(main, win):
    join(main, win)
    first, second = win.send(Kind.REQUEST, msg_id=1), win.send(Kind.REQUEST, msg_id=2)
    main.session.admit(win.ident, second, T0)
    assert rejected(main.session.admit, win.ident, second, T0).reason == "replay"
    assert rejected(main.session.admit, win.ident, first, T0).reason == "replay"
    peer = main.session.windows["w"]
    assert peer.messages == 1 and peer.last_seen == T0


# ============================================================================ liveness

def test_tick_names_a_window_silent_for_more_than_heartbeat_times_liveness(main, win):
    join(main, win)
    assert main.session.tick(T0 + HB * LIVENESS) == ([], [])
    silent, lapsed = main.session.tick(T0 + HB * LIVENESS + 0.1)
    assert [name for name, _ in silent] == ["w"] and "silent for 3.1 s" in silent[0][1] and lapsed == []


def test_a_message_keeps_a_window_alive(main, win):
    join(main, win)
    main.session.admit(win.ident, win.send(Kind.PONG), T0 + 2)
    assert main.session.tick(T0 + 2 + HB * LIVENESS) == ([], [])


def test_tick_returns_lapsed_reservations_once_and_frees_the_name(main, win):
    joining, _ = welcome(main, win)  # timeout 10 s: held until T0 + 11
    assert main.session.tick(T0 + 11) == ([], [])
    assert main.session.tick(T0 + 11.1) == ([], [("w", joining.nonce)])
    assert main.session.tick(T0 + 12) == ([], [])
    assert isinstance(ask(main, WindowNode("w"), T0 + 12), Welcome)


def test_a_reservation_is_held_at_most_a_minute(main, win):
    joining, _ = welcome(main, win, timeout=3600.0)
    assert main.session.tick(T0 + 61.1) == ([], [("w", joining.nonce)])


def test_a_join_waits_for_its_subscription_for_ten_seconds(main, win):
    joining, register = welcome(main, win)
    main.session.register(win.ident, register, T0)
    main.session.tick(T0 + 10)  # max(heartbeat * liveness, 10 s)
    assert main.session.subscribed(joining.topics[-1]) is not None


def test_a_join_that_never_subscribes_is_forgotten_and_its_session_retired(main, win):
    joining, register = welcome(main, win)
    main.session.register(win.ident, register, T0)
    abandoned = win.session.session
    main.session.tick(T0 + 10.1)
    assert main.session.subscribed(joining.topics[-1]) is None and "w" not in main.session.windows
    joining, _ = welcome(main, win, T0 + 11)  # the name is free again: a new handshake...
    replayed = win.send(Kind.REGISTER, body={"nonce": joining.nonce}, session=abandoned)  # ...the old session
    assert rejected(main.session.register, win.ident, replayed, T0 + 11).reason == "replay"


class Call:
    """A call being served, as the node keeps it: counts the cancels it gets."""

    def __init__(self) -> None:
        self.cancels = 0

    def cancel(self) -> None:
        self.cancels += 1


def test_drop_cancels_the_windows_calls_and_only_its(main, win):
    peer = join(main, win)
    mine, other = Call(), Call()
    main.session.serving.update({(peer.session, 5): mine, (b"another window's", 5): other})
    assert main.session.drop("w").name == "w"
    assert (mine.cancels, other.cancels) == (1, 0)
    assert main.session.drop("w") is None  # once
    assert mine.cancels == 1


def test_drop_retires_the_session_so_a_later_message_is_rejected(main, win):
    join(main, win)
    main.session.drop("w")
    error = rejected(main.session.admit, win.ident, win.send(Kind.REQUEST), T0)
    assert isinstance(error, Unwelcome) and error.rejoin is True and error.tell is not None


def test_drop_forgets_the_descriptor_and_the_size_limit(main, win):
    joining, register = welcome(main, win, max_payload=2048)
    main.session.register(win.ident, register, T0, fd=7)
    main.session.subscribed(joining.topics[-1])
    main.session.drop("w")
    assert main.session.capped == {} and main.session.by_fd == {} and main.session.windows == {}


def test_a_dropped_window_rejoins_under_a_new_session(main, win):
    join(main, win)
    old_ident = win.ident
    main.session.drop("w")
    peer = join(main, win, T0 + 1)
    assert peer.ident != old_ident and main.session.admit(win.ident, win.send(Kind.PING), T0 + 1) is peer


def test_cancel_served_cancels_that_call_of_that_window(main, win):
    peer = join(main, win)
    call, same_id_of_another = Call(), Call()
    main.session.serving.update({(peer.session, 9): call, (b"another window's", 9): same_id_of_another})
    main.session.cancel_served(peer, 9)
    assert (call.cancels, same_id_of_another.cancels) == (1, 0)
    main.session.serving.clear()  # the call ended (the node pops it): a late CANCEL finds nothing
    main.session.cancel_served(peer, 9)
    assert call.cancels == 1


# ============================================================================ calls in flight

def test_a_route_is_answered_only_by_its_target(main):
    msg_id = main.session.add_route("a", 5, "b")
    assert main.session.answered_route(msg_id, "a") is None  # not from the source
    assert main.session.answered_route(msg_id, "c") is None
    assert main.session.answered_route(msg_id, "b") == Route("a", 5, "b")
    assert main.session.answered_route(msg_id, "b") is None  # answered once
    assert main.session.routes == {}


def test_a_route_is_cancelled_by_its_source_under_its_own_msg_id(main):
    msg_id = main.session.add_route("a", 5, "b")
    assert main.session.cancel_route("b", 5) is None and main.session.cancel_route("a", 6) is None
    assert main.session.cancel_route("a", 5) == (msg_id, Route("a", 5, "b"))
    assert main.session.answered_route(msg_id, "b") is None
    assert main.session.cancel_route("a", 5) is None


def test_routes_to_a_gone_window_returns_those_it_was_to_answer_and_those_it_asked_and_forgets_all(main):
    to_b = main.session.add_route("a", 1, "b")
    from_b = main.session.add_route("b", 2, "c")
    other = main.session.add_route("a", 3, "c")
    assert main.session.routes_to("b") == ([Route("a", 1, "b")], [(from_b, Route("b", 2, "c"))])
    assert set(main.session.routes) == {other}
    assert main.session.answered_route(from_b, "c") is None and main.session.cancel_route("a", 1) is None
    assert main.session.answered_route(to_b, "b") is None


def test_message_ids_are_never_reused(main):
    ids = [main.session.next_id(), main.session.add_route("a", 1, "b"), main.session.next_id()]
    assert len(set(ids)) == 3


# ============================================================================ a window's side

@pytest.mark.parametrize("reason, error_type", [
    ("name_in_use", NameInUse), ("unauthenticated", AuthenticationError), ("serializer", ProtocolError),
    ("bad_name", ProtocolError), ("something new", ProtocolError),
])
def test_a_refusal_reaches_the_user_as_the_error_its_reason_names(main, win, reason, error_type):
    hello = win.hello()
    refuse = main.send(Kind.REFUSE, hello.session, body={"reason": reason, "message": "because"})
    with pytest.raises(HandshakeFailed) as info:
        win.session.answer(refuse, ENDPOINT)
    assert type(info.value.error) is error_type
    if error_type is not NameInUse:
        assert "because" in str(info.value.error)


def test_an_answer_other_than_welcome_or_refuse_fails_the_handshake(main, win):
    hello = win.hello()
    with pytest.raises(HandshakeFailed) as info:
        win.session.answer(main.send(Kind.PING, hello.session, body={}), ENDPOINT)
    assert type(info.value.error) is ProtocolError and "PING" in str(info.value.error)


def test_an_answer_to_an_earlier_handshake_is_rejected(main, win):
    first = win.hello()
    decision = main.session.hello(win.probe, first, T0)
    win.hello()  # gave up on the first, started over: a new session
    error = rejected(win.session.answer, main.answer(first, decision), ENDPOINT)
    assert error.reason == "stale_session" and win.session.main_session is None


@pytest.mark.parametrize("missing", ["nonce", "pub"])
def test_a_welcome_without_a_nonce_or_pub_is_refused_not_a_crash(main, win, missing):
    hello = win.hello()
    body = {"nonce": "ab" * 16, "pub": PUB, "serializer": "pickle", "max_payload": None}
    del body[missing]
    with pytest.raises((Rejected, HandshakeFailed)):
        win.session.answer(main.send(Kind.WELCOME, hello.session, "w", body=body), ENDPOINT)


def test_a_windows_request_ids_are_never_reused(win):
    ids = [win.session.next_id() for _ in range(3)]
    win.session.start_handshake()  # not even across a rejoin: a late answer cannot match a new request
    ids.append(win.session.next_id())
    assert len(set(ids)) == 4


def test_every_handshake_has_a_new_session_and_attempt(win):
    first = win.session.start_handshake(), win.session.session
    second = win.session.start_handshake(), win.session.session
    assert first[0] + 1 == second[0] and first[1] != second[1] and NO_SESSION not in (first[1], second[1])


def test_the_window_admits_only_its_mains_messages_to_its_session(main, win):
    join(main, win)
    ws = win.session
    assert rejected(ws.admit, main.send(Kind.REQUEST, S3), T0).reason == "stale_session"  # not our session
    other_main = main.send(Kind.REQUEST, ws.session, session=S3)
    error = rejected(ws.admit, other_main, T0)
    assert error.reason == "stale_session" and not isinstance(error, MainRestarted)
    reply = main.send(Kind.REPLY, ws.session, "w")
    ws.admit(reply, T0 + 1)
    assert rejected(ws.admit, reply, T0 + 2).reason == "replay" and ws.last_seen == T0 + 1


def test_an_error_from_an_unknown_main_session_while_connected_means_the_main_restarted(main, win):
    join(main, win)
    restarted = main.send(Kind.ERROR, win.session.session, "w", body={"code": "peer_lost"}, session=S3)
    with pytest.raises(MainRestarted) as info:
        win.session.admit(restarted, T0)
    assert info.value.reason == "stale_session"
    win.session.lost(T0)
    error = rejected(win.session.admit, restarted, T0)  # not connected: only stale
    assert not isinstance(error, MainRestarted)


def test_broadcasts_count_the_numbers_missed_and_reject_replays(main, win):
    join(main, win)
    ws = win.session
    first = main.broadcast(seq=40)  # joined late: nothing counted missed before the first
    assert ws.admit_broadcast(first, T0) == 0
    assert ws.admit_broadcast(main.broadcast(seq=41), T0) == 0
    latest = main.broadcast(seq=44)
    assert ws.admit_broadcast(latest, T0 + 1) == 2 and ws.last_pub == T0 + 1
    for replay in (latest, main.broadcast(seq=43)):
        assert rejected(ws.admit_broadcast, replay, T0 + 2).reason == "replay"
    assert rejected(ws.admit_broadcast, main.broadcast(seq=45, session=S3), T0).reason == "stale_session"
    assert ws.last_bseq == 44 and ws.last_pub == T0 + 1


def test_the_mains_pub_heartbeat_is_numbered_with_its_broadcasts(main, win):
    join(main, win)
    ws = win.session
    assert [ws.admit_broadcast(m, T0) for m in (main.broadcast(), main.heartbeat(), main.broadcast())] == [0, 0, 0]


def test_broadcast_numbers_carry_across_a_rejoin_to_the_same_main_not_to_another(main, win):
    join(main, win)
    win.session.admit_broadcast(main.broadcast(seq=5), T0)
    win.session.lost(T0 + 1)
    main.session.drop("w")
    join(main, win, T0 + 2)
    assert win.session.admit_broadcast(main.broadcast(seq=8), T0 + 2) == 2  # 6 and 7 sent while away
    restarted = MainNode()
    win.session.lost(T0 + 3)
    join(restarted, win, T0 + 4)
    assert win.session.admit_broadcast(restarted.broadcast(seq=3), T0 + 4) == 0  # another main's numbers


def test_a_broadcast_seen_before_a_rejoin_to_the_same_main_is_still_a_replay(main, win):
    join(main, win)
    recorded = main.broadcast(seq=5)
    win.session.admit_broadcast(recorded, T0)
    win.session.lost(T0 + 1)
    main.session.drop("w")
    join(main, win, T0 + 2)
    assert rejected(win.session.admit_broadcast, recorded, T0 + 2).reason == "replay"


def test_a_connected_window_pings_at_most_once_a_heartbeat_when_quiet(main, win):
    join(main, win)
    ws = win.session
    ws.sent(T0)
    assert ws.tick(T0 + 0.9 * HB) is None  # heard and spoke within the heartbeat
    assert ws.tick(T0 + HB) == "ping"
    assert ws.tick(T0 + 1.5 * HB) is None  # pinged already this heartbeat
    assert ws.tick(T0 + 2 * HB) == "ping"


def test_a_window_whose_main_is_silent_past_heartbeat_times_liveness_has_lost_it(main, win):
    join(main, win)
    ws = win.session
    assert ws.tick(T0 + HB * LIVENESS) != "lost"
    assert ws.tick(T0 + HB * LIVENESS + 0.1) == "lost"
    assert ws.lost(T0 + 4) is True and ws.lost(T0 + 5) is False and ws.lost_at == T0 + 4
    assert ws.tick(T0 + 100) is None  # not connected: nothing to watch


def test_a_window_not_yet_connected_does_not_ping(win):
    assert win.session.tick(T0) is None


def test_the_broadcast_link_is_silent_only_well_past_the_mains_own_limit(main, win):
    join(main, win)
    ws = win.session
    ws.admit_broadcast(main.heartbeat(), T0)
    limit = 2 * HB * LIVENESS + max(2.0, HB * LIVENESS)  # 9 s
    assert not ws.sub_silent(T0 + limit)
    assert ws.sub_silent(T0 + limit + 0.1)


def test_backoff_grows_to_its_cap_and_gives_up_after_give_up_after():
    ws = WindowSession("w", heartbeat=HB, liveness=LIVENESS, max_backoff=0.3, give_up_after=10.0,
                       _random=lambda low, high: 1.0)  # no jitter
    ws.registered(T0 - 1)
    ws.lost(T0)
    assert [ws.backoff(T0 + i) for i in range(5)] == [0.05, 0.1, 0.2, 0.3, 0.3]
    assert ws.backoff(T0 + 9.9) == 0.3 and ws.lost_for(T0 + 9.9) == pytest.approx(9.9)
    assert ws.backoff(T0 + 10) is None
    ws.registered(T0 + 11)
    assert ws.failures == 0 and ws.lost_at is None


def test_backoff_stays_at_its_cap_after_thousands_of_failures():
    ws = WindowSession("w", heartbeat=HB, liveness=LIVENESS, max_backoff=5.0, _random=lambda low, high: 1.0)
    ws.registered(T0 - 1)
    ws.lost(T0)
    ws.failures = 5000  # a main down for hours: 2.0 ** 5000 would overflow
    assert ws.backoff(T0 + 1) == 5.0


def test_a_welcome_whose_body_is_not_json_fails_the_handshake_at_once():
    ws = WindowSession("w", heartbeat=HB, liveness=LIVENESS)
    ws.start_handshake()
    welcome = Message(Kind.WELCOME, 0, 1, bytes(range(16)), ws.session, "main", "w", "", (b"not json",))
    with pytest.raises(HandshakeFailed) as failed:
        ws.answer(welcome, "tcp://127.0.0.1:1")
    assert isinstance(failed.value.error, ProtocolError)


def test_backoff_is_jittered_between_half_and_one_and_a_half_times():
    ws = WindowSession("w", heartbeat=HB, liveness=LIVENESS)
    delays = [ws.backoff(T0) for _ in range(3)]
    assert all(0.5 * base <= d <= 1.5 * base for d, base in zip(delays, (0.05, 0.1, 0.2)))


def test_a_reconnect_handshake_is_bounded_by_two_liveness_periods(win):
    assert win.session.handshake_limit(30.0, first=True) == 30.0
    assert win.session.handshake_limit(30.0, first=False) == 2 * HB * LIVENESS
    assert win.session.handshake_limit(1.0, first=False) == 1.0


# ============================================================================ the replay guard

def test_replay_guard_accepts_only_increasing_seq_of_the_live_session():
    guard = ReplayGuard()
    assert not guard.accept("w", S1, 1)  # unknown peer
    assert guard.new_session("w", S1, seq=5)
    assert [guard.accept("w", S1, n) for n in (6, 9, 9, 8, 5, 10)] == [True, True, False, False, False, True]
    assert not guard.accept("w", S2, 100)
    assert not guard.accept("other", S1, 100)


def test_new_session_retires_the_old_one_for_good():
    guard = ReplayGuard()
    guard.new_session("w", S1, 0)
    guard.accept("w", S1, 1, stream=1)
    assert guard.new_session("w", S2, 0)
    assert not guard.accept("w", S1, 10**9)
    assert not guard.accept("w", S1, 10**9, stream=1)
    assert not guard.new_session("w", S1, 10**9)
    guard.forget("w")
    assert not guard.new_session("w", S1, 0) and not guard.new_session("w", S2, 0)
    assert guard.new_session("w", S3, 0)


def test_forget_retires_the_live_session():
    guard = ReplayGuard()
    guard.new_session("w", S1, 0)
    guard.forget("w")
    assert not guard.accept("w", S1, 1)
    assert not guard.new_session("w", S1, 1)
    guard.forget("never-seen")  # harmless
    assert guard.new_session("w", S2, 0)


def test_retired_memory_is_bounded():
    guard = ReplayGuard(max_retired=2)
    sessions = [bytes([i]) * 16 for i in range(4)]
    for s in sessions:
        guard.new_session("w", s, 0)  # each retires the one before
    assert not guard.new_session("w", sessions[1], 0) and not guard.new_session("w", sessions[2], 0)
    assert len(guard._retired) == 2
    assert guard.new_session("w", sessions[0], 0)  # the oldest was forgotten


def test_streams_are_counted_separately():
    guard = ReplayGuard()
    guard.new_session("w", S1, 100)
    assert guard.accept("w", S1, 1, stream=1)  # a new stream starts its own count
    assert guard.accept("w", S1, 101)
    assert not guard.accept("w", S1, 1, stream=1)
    assert guard.accept("w", S1, 2, stream=1)
    assert not guard.accept("w", S2, 3, stream=2)
    # Re-announcing the live session keeps every stream's high-water mark.
    assert guard.new_session("w", S1, 50)
    assert not guard.accept("w", S1, 2, stream=1)
    assert not guard.accept("w", S1, 101)
    assert guard.accept("w", S1, 102)


# ============================================================================ no I/O

ZPROKIT_DIR = pathlib.Path(__file__).resolve().parent.parent / "zprokit"
IO_MODULES = ("zmq", "socket", "threading", "selectors", "asyncio")

NO_IO_SCRIPT = f"""
import json, sys, types
# `import zprokit.session` would first run zprokit/__init__.py, which imports the whole
# library (the nodes, so zmq, threading...): the package is made by hand, empty, so only
# protocol, session and what they import themselves are loaded.
pkg = types.ModuleType("zprokit")
pkg.__path__ = [{str(ZPROKIT_DIR)!r}]
sys.modules["zprokit"] = pkg
import zprokit.protocol, zprokit.session
print(json.dumps({{
    "io": sorted(m for m in sys.modules if m.partition(".")[0] in {IO_MODULES!r}),
    "zprokit": sorted(m for m in sys.modules if m.startswith("zprokit")),
}}))
"""


def test_protocol_and_session_import_no_sockets_threads_or_event_loops():
    out = subprocess.run([sys.executable, "-I", "-c", NO_IO_SCRIPT], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert "zprokit.session" in found["zprokit"] and "zprokit.main" not in found["zprokit"]  # the check ran
    assert found["io"] == []
