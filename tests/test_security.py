"""Bad input against a running main (SECURITY.md), while a legitimate window keeps working.

Every attack runs while the honest window makes requests on a thread of its
own (``HonestTraffic``): each of them must succeed, during the attack and
after it. Each test then asserts that the bad input was rejected and counted
under the right reason in ``stats()["rejected"]``, that no handler ran for it
(the echo handler records who called it), and, for the malicious pickle, that
the file its execution would create does not exist.

The attackers are raw pyzmq sockets: ``DEALER``s sending whatever frames the
test builds; a ``RawWindow`` that holds the key, raw sockets around a
``WindowSession`` (``zprokit.session``): the session makes the handshake,
numbers the messages and checks what the main sends back, and the sockets
send exactly the frames a test gives (to record valid messages and replay
or tamper with them); and a ``FakeMain`` that holds the key, raw sockets
around a ``MainSession``: it handshakes one real ``Window`` as a main does,
then sends it whatever frames a test gives. What no session would send (a
replay, a tampered frame, a wrong key, a forged name or sequence number) is
built by hand with ``protocol.pack``: that is the attack. The
random part is a seeded ``random.Random`` (no hypothesis: a reproducible
stream of thousands of messages at a live server is what is wanted, and
shrinking a stream against a server has little to offer).
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import zmq

from conftest import Inbox, wait_until
from zprokit import AuthenticationError, Main, ProtocolError, Window
from zprokit.security import subscriber_token
from zprokit.protocol import (
    BROADCAST_PREFIX, NO_SESSION, VERSION, Kind, Message, Signer, decode_body, encode_body, is_denial, pack, unpack,
)
from zprokit.session import MAIN_NAME, Joining, MainSession, Peer, Welcome, WindowSession

pytestmark = pytest.mark.timeout(90)

KEY = b"the security suite's shared key"
WRONG = Signer(b"a key that is not the key")
SIGNER = Signer(KEY)
SEED = 20240405
WAIT = 10.0
HEARTBEAT = 2.0  # RawWindow and FakeMain never ping: give them time
LIVENESS = 3  # Main's and Window's default
MAX_PAYLOAD = 256 * 1024
REASONS = ("bad_signature", "replay", "malformed", "oversized", "unknown_version", "unauthenticated")


# --- the cast ----------------------------------------------------------------------------------


class Echo:
    """The main's handler: returns its argument, and remembers who asked."""

    def __init__(self) -> None:
        self.senders: list[str] = []

    def __call__(self, event: Any, args: Any) -> Any:
        self.senders.append(event.sender)
        return args


@pytest.fixture
def echo() -> Echo:
    return Echo()


@pytest.fixture
def main(echo: Echo) -> Iterator[Main]:
    with Main("tcp://127.0.0.1:0", key=KEY, max_payload=MAX_PAYLOAD, heartbeat=HEARTBEAT) as m:
        m.on_msg_from_render(echo, channel="echo")
        yield m


@pytest.fixture
def honest(main: Main) -> Iterator[Window]:
    with Window("honest", main.endpoint, key=KEY, heartbeat=HEARTBEAT) as w:
        yield w


class _Context(zmq.Context):
    """Keeps every socket it made until ``destroy``, so none is collected unclosed mid-test."""

    made: list[zmq.Socket]  # declared, so pyzmq takes it for an attribute and not a socket option

    def __init__(self) -> None:
        super().__init__()
        self.made = []

    def socket(self, *args: Any, **kwargs: Any) -> zmq.Socket:  # type: ignore[override]
        sock = super().socket(*args, **kwargs)
        self.made.append(sock)
        return sock


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    """The attackers' context; every socket made from it is closed at the end, unsent messages dropped."""
    context = _Context()
    yield context
    context.destroy(linger=0)
    context.made.clear()


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Bad input is dropped and counted: it never makes zprokit log an error (a crash in a handler)."""
    caplog.set_level(logging.WARNING, logger="zprokit")
    yield
    errors = [r for r in caplog.records if r.name.startswith("zprokit") and r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


class HonestTraffic:
    """The honest window's requests, in a loop on a thread of its own, for as long as the attack lasts.

    Entering waits for the first answer (the traffic is flowing before the
    attack starts); leaving waits for two more answers (so requests were
    served after every attack message had been sent), stops, and fails the
    test if any request failed.
    """

    def __init__(self, window: Window) -> None:
        self.window = window
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="honest-traffic", daemon=True)

    def _run(self) -> None:
        for i in itertools.count():
            if self._stop.is_set():
                return
            try:
                answer = self.window.render_msg_to_main(("honest", i), channel="echo").result(WAIT)
            except Exception as e:  # recorded, and reported by __exit__
                self.failures.append(repr(e))
                return
            if answer != ("honest", i):
                self.failures.append(f"request {i} answered {answer!r}")
                return
            self.ok += 1

    def __enter__(self) -> "HonestTraffic":
        self._thread.start()
        assert wait_until(lambda: self.ok or self.failures, WAIT), "the honest window's first request got no answer"
        return self

    def __exit__(self, *exc: Any) -> None:
        during = self.ok
        try:
            assert wait_until(lambda: self.ok >= during + 2 or self.failures, WAIT), "the honest window stalled"
        finally:
            self._stop.set()
            self._thread.join(WAIT)
        assert not self.failures, self.failures


def rejected(main: Main) -> dict[str, int]:
    return dict(main.stats()["rejected"])


def new_rejections(main: Main, before: dict[str, int]) -> dict[str, int]:
    now = rejected(main)
    return {k: n - before.get(k, 0) for k, n in now.items() if n != before.get(k, 0)}


def wait_for_rejections(main: Main, before: dict[str, int], count: int) -> dict[str, int]:
    """The rejections since ``before``, once there are ``count`` of them (fails after ``WAIT`` s)."""
    assert wait_until(lambda: sum(new_rejections(main, before).values()) >= count, WAIT), new_rejections(main, before)
    return new_rejections(main, before)


def wait_for(main: Main, before: dict[str, int], done: Callable[[dict[str, int]], bool]) -> dict[str, int]:
    """The rejections since ``before``, once ``done(them)`` (fails after ``WAIT`` s)."""
    assert wait_until(lambda: done(new_rejections(main, before)), WAIT), new_rejections(main, before)
    return new_rejections(main, before)


def serves(main: Main, window: Window, echo: Echo) -> None:
    """The main still answers the window, and no one but honest windows ever reached the handler."""
    assert window.render_msg_to_main("still there?", channel="echo").result(WAIT) == "still there?"
    assert set(echo.senders) <= {"honest", "alice", "raw"}, set(echo.senders)  # raw: a key holder, and each test counts its calls


def dealer(ctx: zmq.Context, endpoint: str, routing_id: bytes | None = None, curve: tuple[bytes, bytes, bytes] | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    if curve is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
    sock.connect(endpoint)
    return sock


def recv(sock: zmq.Socket, timeout: float = WAIT) -> list[bytes] | None:
    return sock.recv_multipart() if sock.poll(int(timeout * 1000)) else None


# The attacks below change frames without knowing the wire layout beyond this: the version
# leads the first frame (the topic frame's, for broadcasts, comes before it).


def with_version(frames: list[Any], version: bytes) -> list[bytes]:
    """``frames`` with another version in front of the first frame."""
    return [version + bytes(frames[0])[len(VERSION):], *(bytes(f) for f in frames[1:])]


def swapped(frames: list[Any], old: bytes, new: bytes) -> list[bytes]:
    """``frames`` with the bytes ``old`` (a payload part) replaced by ``new``, wherever they travel."""
    out = [bytes(f).replace(old, new) for f in frames]
    assert out != [bytes(f) for f in frames], "nothing was swapped"
    return out


def flipped(frames: list[Any], index: int, position: int) -> list[bytes]:
    """``frames`` with one bit of one byte changed."""
    out = [bytes(f) for f in frames]
    frame = bytearray(out[index])
    frame[position] ^= 0x40
    out[index] = bytes(frame)
    return out


def hello_body(name: str, serializer: str = "pickle") -> bytes:
    return encode_body({"name": name, "pid": os.getpid(), "host": socket.gethostname(), "serializer": serializer, "timeout": 5})


def hello_frames(signer: Signer, session: WindowSession, serializer: str = "pickle") -> list[bytes]:
    """The HELLO of a new handshake of ``session`` (its first message, sent on a probe socket)."""
    session.start_handshake()
    return pack(signer, Kind.HELLO, 0, session.next_seq(), session.session, NO_SESSION, session.name,
                payload=[hello_body(session.name, serializer)])


class RawWindow:
    """A window that holds the key: raw sockets around a ``WindowSession``.

    The session makes the handshake (its session id, the numbers, the answer
    to WELCOME: the routing id, the PUB address and login, the topics) and
    checks every message ``expect`` reads, as a real window's does; the raw
    sockets send exactly the frames a test gives (``frames`` builds valid ones).
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, name: str, key: bytes = KEY,
                 curve: tuple[bytes, bytes, bytes] | None = None, serializer: str = "pickle") -> None:
        self.name = name
        self.signer = Signer(key)
        self.session = WindowSession(name, heartbeat=HEARTBEAT, liveness=LIVENESS)
        probe = dealer(ctx, endpoint, b"\xff" + os.urandom(15), curve)
        probe.send_multipart(hello_frames(self.signer, self.session, serializer))
        answer = unpack(self.signer, recv(probe) or pytest.fail("no WELCOME"))
        probe.close()
        joining = self.session.answer(answer, endpoint)  # HandshakeFailed if refused
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            self.sub.curve_serverkey, self.sub.curve_publickey, self.sub.curve_secretkey = curve
        elif joining.pub_auth:  # the PUB port admits only windows that handshook
            self.sub.plain_username = name.encode()
            self.sub.plain_password = subscriber_token(key, name, joining.nonce).encode()
        for topic in joining.topics:  # the control topic last: the main registers us once it sees it
            self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        self.sub.connect(joining.pub)
        self.ident = joining.routing_id
        self.sock = dealer(ctx, endpoint, self.ident, curve)
        self.send(self.frames(Kind.REGISTER, [encode_body({"nonce": joining.nonce})], channel="", msg_id=0))
        assert self.expect(Kind.REGISTERED) is not None, "not registered"
        self.session.registered(time.monotonic())

    def frames(self, kind: Kind, payload: list[bytes], channel: str = "echo", target: str = "", msg_id: int | None = None) -> list[bytes]:
        """A validly signed message of this window, numbered by its session (not sent)."""
        session = self.session
        assert session.main_session is not None
        msg_id = session.next_id() if msg_id is None else msg_id
        return pack(self.signer, kind, msg_id, session.next_seq(), session.session, session.main_session,
                    self.name, target, channel, payload)

    def request(self, obj: Any) -> list[bytes]:
        return self.frames(Kind.REQUEST, [pickle.dumps(obj)])

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def expect(self, kind: Kind, timeout: float = WAIT) -> Message | None:
        """The next message of ``kind`` (PINGs and the like skipped), or None after ``timeout`` s.

        Every message read must pass the session's check (``WindowSession.admit``
        raises ``Rejected`` otherwise): the main never sends a window what a window refuses.
        """
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            frames = recv(self.sock, left)
            if frames is None:
                return None
            msg = unpack(self.signer, frames)
            self.session.admit(msg, time.monotonic())
            if msg.kind == kind:
                return msg
        return None


class Evil:
    """Unpickling this creates ``path``: the mark of code that ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


# --- the attacks -------------------------------------------------------------------------------


def random_message(rng: random.Random, session: bytes) -> list[bytes]:
    """One message a stranger without the key might send: noise, or a real message's shape, mangled."""

    def blob(limit: int = 200) -> bytes:
        return rng.randbytes(rng.randint(0, limit))

    def text() -> str:
        return rng.choice(["", "honest", "main", "echo", "x" * rng.randint(1, 300), "κανάλι", "\0", "honest\0"])

    shape = rng.randrange(7)
    if shape == 0:  # noise
        return [blob() for _ in range(rng.randint(1, 6))]
    if shape == 1:  # the version, then noise
        return [VERSION + blob(120), *(blob() for _ in range(rng.randint(0, 3)))]
    header = (rng.choice(list(Kind)), rng.getrandbits(64), rng.getrandbits(64),
              rng.choice([session, NO_SESSION, rng.randbytes(16)]), rng.choice([session, NO_SESSION]),
              text(), text(), text())
    payload = [rng.choice([pickle.dumps(("junk", rng.random())), encode_body({"name": "honest"}), blob(), blob(3000)])
               for _ in range(rng.randint(0, 3))]
    frames = [bytes(f) for f in pack(rng.choice([WRONG, Signer(rng.randbytes(8))]), *header, payload)]
    if shape == 2:  # well formed, signed with a wrong key
        return frames
    if shape == 3:  # a byte changed
        index = rng.randrange(len(frames))
        return flipped(frames, index, rng.randrange(len(frames[index]))) if frames[index] else frames
    if shape == 4:  # frames dropped, or one cut short
        frames = frames[: rng.randint(1, len(frames))]
        index = rng.randrange(len(frames))
        frames[index] = frames[index][: rng.randint(0, len(frames[index]))]
        return frames
    if shape == 5:  # frames added
        return [*frames, *(blob() for _ in range(rng.randint(1, 3)))]
    return with_version(frames, rng.choice([b"ZPK1/hmac-sha256", b"ZPK9/hmac-sha256", b"ZPK2/blake3\0\0\0\0\0", b"", rng.randbytes(16)]))


def test_thousands_of_random_messages_are_all_rejected_and_counted(main: Main, honest: Window, echo: Echo, ctx: zmq.Context):
    rng = random.Random(SEED)
    count = 4000
    # A few strangers, one of them under the honest window's bare name (a stranger cannot take its route over).
    socks = [dealer(ctx, main.endpoint, rid) for rid in (None, b"honest", b"main", b"\xff" + os.urandom(15), None)]
    before = rejected(main)
    with HonestTraffic(honest):
        for i in range(count):
            socks[i % len(socks)].send_multipart(random_message(rng, main.session))
        got = wait_for_rejections(main, before, count)
    assert sum(got.values()) == count, got  # every one counted, once
    assert set(got) <= {"bad_signature", "malformed", "unknown_version", "oversized"}, got
    assert {"bad_signature", "malformed", "unknown_version"} <= set(got), got
    serves(main, honest, echo)


def test_a_stranger_cannot_take_a_window_route_over(main: Main, honest: Window, echo: Echo, ctx: zmq.Context):
    """ROUTER_HANDOVER gives a routing id to whoever claims it last: the window's is not guessable."""
    inbox = Inbox()
    honest.on_msg_from_main(lambda event, args: inbox.put(args), channel="secret")
    thieves = [dealer(ctx, main.endpoint, rid) for rid in (b"honest", b"honest\0", b"honest\0" + b"0" * 32)]
    before = rejected(main)
    for thief in thieves:
        thief.send_multipart([b"hi"])  # makes sure each connection is up before the main sends
    assert wait_for_rejections(main, before, 3) == {"unknown_version": 3}
    main.main_msg_to_render("honest", "for honest only", channel="secret")
    assert inbox.get(WAIT) == "for honest only"
    for thief in thieves:
        assert not thief.poll(200)
    serves(main, honest, echo)


def test_truncated_frames_are_rejected(main: Main, honest: Window, echo: Echo, ctx: zmq.Context):
    raw = RawWindow(ctx, main.endpoint, "raw")
    valid = raw.frames(Kind.REQUEST, [pickle.dumps("a request"), b"a second frame"])
    attacks = [valid[:n] for n in range(1, len(valid))]  # frames dropped from the end
    for i, frame in enumerate(valid):  # each frame cut short, in a few places
        for cut in sorted({0, 1, len(frame) // 2, len(frame) - 1}):
            if cut < len(frame):
                attacks.append([*valid[:i], frame[:cut], *valid[i + 1:]])
    before = rejected(main)
    with HonestTraffic(honest):
        for frames in attacks:
            raw.send(frames)
        got = wait_for_rejections(main, before, len(attacks))
    assert sum(got.values()) == len(attacks), got
    assert set(got) <= {"malformed", "unknown_version", "bad_signature"}, got
    assert raw.expect(Kind.REPLY, 0.3) is None  # none was answered
    raw.send(valid)  # the original still goes through: nothing above touched the replay state
    assert pickle.loads(raw.expect(Kind.REPLY).payload[0]) == "a request"
    serves(main, honest, echo)


def test_wrong_key_is_rejected_as_bad_signature(main: Main, honest: Window, echo: Echo, ctx: zmq.Context, tmp_path: Path):
    mark = tmp_path / "ran"
    impostor = dealer(ctx, main.endpoint, b"\xff" + os.urandom(15))
    session = os.urandom(16)
    hello = pack(WRONG, Kind.HELLO, 0, 1, session, NO_SESSION, "intruder", payload=[hello_body("intruder")])
    request = pack(WRONG, Kind.REQUEST, 1, 2, session, main.session, "honest", "", "echo", [pickle.dumps(Evil(mark))])
    before = rejected(main)
    with HonestTraffic(honest):
        impostor.send_multipart(hello)
        assert is_denial(recv(impostor) or [])  # told plainly, and told nothing else
        for _ in range(100):
            impostor.send_multipart(request)
        got = wait_for_rejections(main, before, 101)
    assert got == {"bad_signature": 101}
    with pytest.raises(AuthenticationError):
        Window("intruder", main.endpoint, key=b"not the key", timeout=WAIT)
    assert not mark.exists()
    assert not main.has_window("intruder")
    serves(main, honest, echo)


def test_every_frame_of_a_valid_message_tampered_in_turn(main: Main, honest: Window, echo: Echo, ctx: zmq.Context):
    raw = RawWindow(ctx, main.endpoint, "raw")
    valid = raw.frames(Kind.REQUEST, [pickle.dumps(b"payload" * 100), b"a second frame"])
    before = rejected(main)
    expected: dict[str, int] = {}
    with HonestTraffic(honest):
        for i, frame in enumerate(valid):
            size = len(frame)
            for position in sorted({0, min(len(VERSION) + 1, size - 1), size // 2, size - 1}):  # version, header, ..., MAC
                raw.send(flipped(valid, i, position))
                reason = "unknown_version" if i == 0 and position < len(VERSION) else "bad_signature"
                expected[reason] = expected.get(reason, 0) + 1
        raw.send([*valid, b"an extra frame"])
        raw.send([*valid[:-1], bytes(valid[-1]) + b"x"])
        expected["bad_signature"] += 2
        got = wait_for_rejections(main, before, sum(expected.values()))
    assert got == expected
    assert raw.expect(Kind.REPLY, 0.3) is None
    raw.send(valid)  # untouched, it is served: the tampered copies left no trace in the replay state
    assert pickle.loads(raw.expect(Kind.REPLY).payload[0]) == b"payload" * 100
    assert echo.senders.count("raw") == 1
    serves(main, honest, echo)


def test_a_replayed_message_is_rejected_and_runs_nothing(main: Main, honest: Window, echo: Echo, ctx: zmq.Context):
    raw = RawWindow(ctx, main.endpoint, "raw")
    recorded = raw.request("once")
    raw.send(recorded)
    assert pickle.loads(raw.expect(Kind.REPLY).payload[0]) == "once"
    before = rejected(main)
    with HonestTraffic(honest):
        for _ in range(50):
            raw.send(recorded)  # from the window's own connection
        stranger = dealer(ctx, main.endpoint)  # and from another one
        for _ in range(10):
            stranger.send_multipart(recorded)
        got = wait_for_rejections(main, before, 60)
    assert got == {"replay": 50, "unregistered": 10}
    assert raw.expect(Kind.REPLY, 0.3) is None
    assert echo.senders.count("raw") == 1  # the handler ran once, for the original
    serves(main, honest, echo)


def test_a_recorded_handshake_cannot_be_replayed(main: Main, honest: Window, echo: Echo, ctx: zmq.Context):
    late = WindowSession("late", heartbeat=HEARTBEAT, liveness=LIVENESS)
    recorded = hello_frames(SIGNER, late)  # a key holder's HELLO, recorded on its way
    first = dealer(ctx, main.endpoint, b"\xff" + os.urandom(15))
    first.send_multipart(recorded)
    assert isinstance(late.answer(unpack(SIGNER, recv(first) or pytest.fail("no WELCOME")), main.endpoint), Joining)
    before = rejected(main)
    replayer = dealer(ctx, main.endpoint, b"\xff" + os.urandom(15))
    for _ in range(20):
        replayer.send_multipart(recorded)
    assert wait_for_rejections(main, before, 20) == {"replay": 20}
    assert not replayer.poll(200)  # no answer at all
    serves(main, honest, echo)


def test_oversized_messages_are_rejected_unread(main: Main, honest: Window, echo: Echo, ctx: zmq.Context, tmp_path: Path):
    mark = tmp_path / "ran"
    raw = RawWindow(ctx, main.endpoint, "raw")
    big = raw.frames(Kind.REQUEST, [pickle.dumps(Evil(mark)), b"x" * MAX_PAYLOAD])  # validly signed, even
    stranger = dealer(ctx, main.endpoint)
    header = (Kind.REQUEST, 1, 1, os.urandom(16), main.session, "honest", "", "echo")
    before = rejected(main)
    with HonestTraffic(honest):
        raw.send(big)
        for size in (MAX_PAYLOAD + 1, 4 * MAX_PAYLOAD):
            stranger.send_multipart(pack(WRONG, *header, [b"y" * size]))
        stranger.send_multipart(pack(WRONG, *header, [b"z" * 1024] * (MAX_PAYLOAD // 1024 + 1)))  # many small frames
        got = wait_for_rejections(main, before, 4)
    assert got == {"oversized": 4}
    assert not mark.exists()
    assert "raw" not in echo.senders
    raw.send(raw.request("small"))  # the sender's connection is kept, and its next message served
    assert pickle.loads(raw.expect(Kind.REPLY).payload[0]) == "small"
    serves(main, honest, echo)


def test_a_frame_over_max_message_size_drops_the_connection_and_the_main_survives(echo: Echo, ctx: zmq.Context):
    with Main("tcp://127.0.0.1:0", key=KEY, max_message_size=64 * 1024) as main:
        main.on_msg_from_render(echo, channel="echo")
        with Window("honest", main.endpoint, key=KEY) as honest:
            stranger = dealer(ctx, main.endpoint)
            before = main.stats()
            with HonestTraffic(honest):
                stranger.send_multipart(pack(WRONG, Kind.REQUEST, payload=[b"-", b"x" * (1024 * 1024)]))
                # libzmq closes the connection before Python sees a byte: only the hang-up is counted.
                assert wait_until(lambda: main.stats()["disconnects"] > before.get("disconnects", 0), WAIT)
            assert sum(rejected(main).values()) == 0  # nothing of it was read
            serves(main, honest, echo)


def test_an_unknown_version_is_rejected(main: Main, honest: Window, echo: Echo, ctx: zmq.Context):
    raw = RawWindow(ctx, main.endpoint, "raw")
    valid = raw.request("v")
    versions = [v for v in (b"ZPK1/hmac-sha256", b"ZPK9/hmac-sha256", b"zpk2/hmac-sha256", b"ZPK2/blake3\0\0\0\0\0",
                            b"", b"\x00" * 16) if v != VERSION]
    before = rejected(main)
    with HonestTraffic(honest):
        for version in versions:
            raw.send(with_version(valid, version))
        got = wait_for_rejections(main, before, len(versions))
    assert got == {"unknown_version": len(versions)}
    assert "raw" not in echo.senders
    serves(main, honest, echo)


def test_a_malicious_pickle_never_runs(main: Main, honest: Window, echo: Echo, ctx: zmq.Context, tmp_path: Path):
    marks = [tmp_path / f"ran-{i}" for i in range(4)]
    raw = RawWindow(ctx, main.endpoint, "raw")
    stranger = dealer(ctx, main.endpoint)
    before = rejected(main)
    with HonestTraffic(honest):
        # signed with the wrong key
        header = (Kind.REQUEST, 1, 10**6, raw.session.session, main.session, "raw", "", "echo")
        stranger.send_multipart(pack(WRONG, *header, [pickle.dumps(Evil(marks[0]))]))
        raw.send(pack(WRONG, *header, [pickle.dumps(Evil(marks[1]))]))
        # a valid message whose payload was swapped for the pickle
        harmless = pickle.dumps("harmless")
        raw.send(swapped(raw.frames(Kind.REQUEST, [harmless]), harmless, pickle.dumps(Evil(marks[2]))))
        # the pickle in a handshake signed with no key of ours, and in a routed message for the honest window
        stranger.send_multipart(pack(Signer(b"\0"), Kind.HELLO, 0, 1, os.urandom(16), payload=[pickle.dumps(Evil(marks[3]))]))
        routed = raw.frames(Kind.MESSAGE, [harmless], channel="c", target="honest")
        raw.send(swapped(routed, harmless, pickle.dumps(Evil(marks[3]))))
        got = wait_for_rejections(main, before, 5)
    assert got == {"bad_signature": 5}
    assert not any(m.exists() for m in marks), [m for m in marks if m.exists()]
    assert "raw" not in echo.senders
    serves(main, honest, echo)
    pickle.loads(pickle.dumps(Evil(marks[0]))).close()  # and the mark is real: unpickled, it appears
    assert marks[0].exists()


def test_a_json_main_never_unpickles_even_a_validly_signed_pickle(ctx: zmq.Context, tmp_path: Path):
    """serializer="json" keeps pickle off the wire even for a key holder: the main reads every payload as JSON."""
    mark = tmp_path / "ran"
    calls: list[Any] = []
    with Main("tcp://127.0.0.1:0", key=KEY, serializer="json", heartbeat=HEARTBEAT) as main:
        main.on_msg_from_render(lambda event, args: calls.append(args), channel="echo")
        raw = RawWindow(ctx, main.endpoint, "key-holder", serializer="json")
        raw.send(raw.request(Evil(mark)))  # RawWindow.request pickles
        error = raw.expect(Kind.ERROR)
        assert error is not None and decode_body(error.payload)["code"] == "remote"
        assert not mark.exists()
        assert calls == []


def test_serializer_mismatch_is_refused_with_a_clear_error():
    with Main("tcp://127.0.0.1:0", key=KEY, serializer="json") as main:
        with pytest.raises(ProtocolError, match="'json' serializer and the window 'pickle'"):
            Window("w", main.endpoint, key=KEY, timeout=WAIT)
        assert main.stats()["rejected"].get("refused_serializer") == 1
        with Window("w", main.endpoint, key=KEY, serializer="json") as w:
            main.on_msg_from_render(lambda e, a: {"got": a}, channel="j")
            assert w.render_msg_to_main([1, "two"], channel="j").result(WAIT) == {"got": [1, "two"]}
    with Main("tcp://127.0.0.1:0", key=KEY) as main:
        with pytest.raises(ProtocolError, match="serializer"):
            Window("w", main.endpoint, key=KEY, serializer="json", timeout=WAIT)


def test_a_handshake_flood_is_counted_and_the_main_serves_on(main: Main, honest: Window, echo: Echo, ctx: zmq.Context,
                                                              caplog: pytest.LogCaptureFixture):
    probes = [dealer(ctx, main.endpoint, b"\xff" + os.urandom(15)) for _ in range(40)]
    recorded = hello_frames(SIGNER, WindowSession("flood", heartbeat=HEARTBEAT, liveness=LIVENESS))  # a key holder's
    before = rejected(main)
    with HonestTraffic(honest):
        for i in range(2000):  # HELLOs of strangers: wrong key, or none
            session = os.urandom(16)
            signer = WRONG if i % 2 else Signer(os.urandom(8))
            probes[i % len(probes)].send_multipart(
                pack(signer, Kind.HELLO, 0, 1, session, NO_SESSION, f"w{i}", payload=[hello_body(f"w{i}")]))
        for i in range(500):  # one recorded HELLO, over and over
            probes[i % len(probes)].send_multipart(recorded)
        deaf = dealer(ctx, main.endpoint, b"\xff" + os.urandom(15))
        deaf.setsockopt(zmq.RCVHWM, 10)
        for i in range(3000):  # and a stranger who never reads the refusals it gets back
            deaf.send_multipart(pack(WRONG, Kind.HELLO, 0, 1, os.urandom(16), NO_SESSION, "deaf", payload=[hello_body("deaf")]))
        got = wait_for_rejections(main, before, 5000 + 499)
    assert got == {"bad_signature": 5000, "replay": 499}
    assert list(main._session._reservations) == ["flood"]  # one name reserved, by the one HELLO answered
    warnings = [r.getMessage() for r in caplog.records if r.name == "zprokit.main"]
    assert len(warnings) <= 3, warnings  # a line per reason (and per 10 s), not per message
    with Window("newcomer", main.endpoint, key=KEY):  # the door is still open
        assert main.has_window("newcomer")
    serves(main, honest, echo)


def test_a_connection_flood_costs_the_windows_little(main: Main, honest: Window, echo: Echo, ctx: zmq.Context):
    """Each hang-up makes the main ping its windows (to learn which one left): one sweep at a time, not one per hang-up."""
    before_in = honest.stats()["messages_in"]
    before = main.stats()["disconnects"]
    with HonestTraffic(honest) as traffic:
        for _ in range(200):
            sock = dealer(ctx, main.endpoint)
            sock.send_multipart([b"x"])  # so the connection is surely made before it is closed
            sock.close()
            time.sleep(0.005)  # paced: hang-ups that arrive one by one, not in one batch
        assert wait_until(lambda: main.stats()["disconnects"] - before >= 200, WAIT), main.stats()["disconnects"] - before
    extra = honest.stats()["messages_in"] - before_in - traffic.ok  # what the window got besides its replies
    assert extra < 60, extra  # about one ping per 50 ms sweep, not one per hang-up
    serves(main, honest, echo)


# --- CURVE -----------------------------------------------------------------------------------


@pytest.fixture
def curve() -> dict[str, tuple[bytes, bytes]]:
    return {who: zmq.curve_keypair() for who in ("main", "alice", "mallory", "stranger")}


def test_under_curve_a_window_cannot_claim_another_windows_name(curve, echo: Echo, ctx: zmq.Context):
    server_public, server_secret = curve["main"]
    allow = {"alice": curve["alice"][0], "mallory": curve["mallory"][0]}
    with Main("tcp://127.0.0.1:0", curve_secret_key=server_secret, curve_allow=allow, heartbeat=HEARTBEAT) as main:
        main.on_msg_from_render(echo, channel="echo")
        with Window("alice", main.endpoint, curve_secret_key=curve["alice"][1], curve_server_key=server_public,
                    heartbeat=HEARTBEAT) as alice:
            before = rejected(main)
            with HonestTraffic(alice):
                # Mallory's key asks for alice's name: refused at the handshake.
                with pytest.raises(AuthenticationError, match="'mallory', not 'alice'"):
                    Window("alice", main.endpoint, curve_secret_key=curve["mallory"][1], curve_server_key=server_public,
                           timeout=WAIT)
                # A key on no list: the ZAP handler refuses it, before any message.
                with pytest.raises(AuthenticationError, match="allow-list"):
                    Window("stranger", main.endpoint, curve_secret_key=curve["stranger"][1],
                           curve_server_key=server_public, timeout=WAIT)
                # Mallory, registered as herself, sends under alice's routing id, and under her own with alice's name.
                mallory_keys = (server_public, *curve["mallory"])
                mallory = RawWindow(ctx, main.endpoint, "mallory", key=main.key, curve=mallory_keys)
                forged = (Kind.REQUEST, 1, 99, mallory.session.session, main.session, "alice", "", "echo")
                as_alice = dealer(ctx, main.endpoint, b"alice\0" + b"0" * 32, mallory_keys)
                as_alice.send_multipart(pack(mallory.signer, *forged, [pickle.dumps("from mallory")]))
                mallory.send(pack(mallory.signer, *forged, [pickle.dumps("from mallory")]))
                # unauthenticated: the HELLO, the ZAP refusal (libzmq may retry it), the routing id;
                # unregistered: her own routing id, with alice's name in the header
                wait_for(main, before, lambda got: got.get("unauthenticated", 0) >= 3 and got.get("unregistered") == 1)
            assert mallory.expect(Kind.REPLY, 0.3) is None and not as_alice.poll(0)
            assert not main.has_window("stranger")
            assert main.get_window("alice") is not None and "mallory" not in echo.senders
            serves(main, alice, echo)


def test_under_curve_a_plain_client_gets_nothing_through(curve, echo: Echo, ctx: zmq.Context):
    """No CURVE, no connection: even a message signed with the (public, derived) key never reaches Python."""
    server_public, server_secret = curve["main"]
    with Main("tcp://127.0.0.1:0", curve_secret_key=server_secret, curve_allow={"alice": curve["alice"][0]}) as main:
        main.on_msg_from_render(echo, channel="echo")
        before = main.stats()["messages_in"]
        plain = dealer(ctx, main.endpoint)
        plain.send_multipart(hello_frames(Signer(main.key), WindowSession("alice", heartbeat=HEARTBEAT, liveness=LIVENESS)))
        assert not plain.poll(500)  # no answer within half a second ...
        assert main.stats()["messages_in"] == before  # ... because nothing arrived
        with Window("alice", main.endpoint, curve_secret_key=curve["alice"][1], curve_server_key=server_public) as alice:
            serves(main, alice, echo)


def test_curve_main_binds_beyond_loopback_without_a_shared_key(curve):
    server_public, server_secret = curve["main"]
    with Main("tcp://0.0.0.0:0", curve_secret_key=server_secret, curve_allow={"alice": curve["alice"][0]}) as main:
        endpoint = "tcp://127.0.0.1:" + main.endpoint.rsplit(":", 1)[1]
        main.on_msg_from_render(lambda e, a: a * 2, channel="double")
        with Window("alice", endpoint, curve_secret_key=curve["alice"][1], curve_server_key=server_public) as alice:
            assert alice.key == main.key  # both derive it from the main's public key
            assert alice.render_msg_to_main(21, channel="double").result(WAIT) == 42
            inbox = Inbox()
            alice.on_broadcast(lambda e, a: inbox.put(a))
            main.broadcast("over CURVE")
            assert inbox.get(WAIT) == "over CURVE"


def test_curve_create_window_gets_a_key_of_its_own(curve, tests_dir: str):
    server_public, server_secret = curve["main"]
    with Main("tcp://127.0.0.1:0", curve_secret_key=server_secret, curve_allow={}) as main:
        reports = Inbox()
        main.on_msg_from_render(lambda e, a: reports.put((e.sender, a)), channel="report")
        handle = main.create_window("kid", "_targets:returns", env={"PYTHONPATH": tests_dir})
        sender, (what, pid) = reports.get(WAIT)
        assert (sender, what, pid) == ("kid", "hello", handle.pid)
        assert handle.join(WAIT) == 0


def test_curve_create_window_that_cannot_start_leaves_no_key_on_the_allow_list(curve):
    server_public, server_secret = curve["main"]
    with Main("tcp://127.0.0.1:0", curve_secret_key=server_secret, curve_allow={}) as main:
        allowed = dict(main._sockets.zap._names)
        with pytest.raises(TypeError):
            main.create_window("kid", 42)  # neither a callable nor "module:function"
        assert main._sockets.zap._names == allowed


# --- the window's side: a main that holds the key, and attacks ----------------------------------


class FakeMain:
    """A main that holds the key: raw sockets around a ``MainSession``. It handshakes one window
    as a main does, then sends it whatever frames a test gives.

    The session decides the handshake (the WELCOME and its nonce, the
    REGISTER, the control subscription that completes it) and numbers what
    the ROUTER sends; the fake adds what a main's sockets add: the PUB
    address in WELCOME, and the numbers of its broadcasts.
    """

    def __init__(self, ctx: zmq.Context, key: bytes = KEY) -> None:
        self.router = ctx.socket(zmq.ROUTER)
        self.xpub = ctx.socket(zmq.XPUB)
        for sock in (self.router, self.xpub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub_endpoint = self.xpub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.signer = Signer(key)
        self.session = MainSession(os.urandom(16), serializer="pickle", heartbeat=HEARTBEAT, liveness=LIVENESS)
        self._bseq = itertools.count(1)  # the PUB's numbers (a main's publisher keeps them, not its session)
        self.peer: Peer | None = None  # the window, once registered

    def accept(self) -> None:
        """Answer a window's HELLO and REGISTER (run beside the Window's constructor)."""
        probe, *frames = recv(self.router) or pytest.fail("no HELLO")
        hello = unpack(self.signer, frames)
        decision = self.session.hello(probe, hello, time.monotonic())
        assert isinstance(decision, Welcome), decision
        # What a main's sockets add to the session's WELCOME: where the PUB is, and no login (this XPUB admits anyone).
        body = {**decision.body, "pub": self.pub_endpoint, "pub_auth": None}
        self.router.send_multipart([probe, *pack(self.signer, Kind.WELCOME, hello.msg_id, self.session.next_seq(),
                                                 self.session.session, hello.session, MAIN_NAME, decision.name,
                                                 payload=[encode_body(body)])])
        ident, *frames = recv(self.router) or pytest.fail("no REGISTER")
        register = unpack(self.signer, frames)
        assert register.kind == Kind.REGISTER, register
        # Rejected unless the routing id and the body carry the WELCOME's nonce.
        peer = self.session.register(ident, register, time.monotonic())
        while peer is None:  # registered once the window's SUB has subscribed to its control topic
            event = (recv(self.xpub) or pytest.fail("no subscription"))[0]
            if event[:1] == b"\x01":
                peer = self.session.subscribed(event[1:])
        self.peer = peer
        self.send(self.frames(Kind.REGISTERED, []))

    @property
    def window(self) -> Peer:
        assert self.peer is not None, "no window registered"
        return self.peer

    def frames(self, kind: Kind, payload: list[bytes], channel: str = "", source: str = "") -> list[bytes]:
        """A validly signed message to the window, numbered by the session (not sent);
        ``source``: routed from that window (else from the main)."""
        return pack(self.signer, kind, 0, self.session.next_seq(), self.session.session, self.window.session,
                    source, self.window.name, channel, payload)

    def broadcast(self, payload: list[bytes], topic: str = "") -> list[bytes]:
        return pack(self.signer, Kind.BROADCAST, 0, next(self._bseq), self.session.session, NO_SESSION, "", "", topic,
                    payload, topic=BROADCAST_PREFIX + topic.encode())

    def send(self, frames: list[bytes]) -> None:
        self.router.send_multipart([self.window.ident, *frames])

    def publish(self, frames: list[bytes]) -> None:
        self.xpub.send_multipart(frames)


def test_a_window_verifies_everything_from_its_main_connection(ctx: zmq.Context, tmp_path: Path):
    marks = [tmp_path / f"ran-{i}" for i in range(6)]
    fake = FakeMain(ctx)
    accepting = threading.Thread(target=fake.accept, name="fake-main")
    accepting.start()
    with Window("target", fake.endpoint, key=KEY, heartbeat=10.0) as window:
        accepting.join(WAIT)
        got = Inbox()
        window.on_msg_from_main(lambda event, args: got.put(("direct", args)), channel="c")
        window.on_render_msg_to_render(lambda event, args: got.put((event.sender, args)), channel="c")
        window.on_broadcast(lambda event, args: got.put(("broadcast", args)))

        direct = fake.frames(Kind.MESSAGE, [pickle.dumps("direct")], "c")
        routed = fake.frames(Kind.MESSAGE, [pickle.dumps("routed")], "c", source="peer")
        broadcast = fake.broadcast([pickle.dumps("everyone")])
        fake.send(direct)
        fake.send(routed)
        fake.publish(broadcast)
        assert sorted(got.wait_for(3, WAIT)) == [("broadcast", "everyone"), ("direct", "direct"), ("peer", "routed")]

        evil = [pickle.dumps(Evil(m)) for m in marks]
        forged = (Kind.MESSAGE, 0, 10**6, fake.session.session, fake.window.session, "peer", "target", "c")
        harmless = pickle.dumps("harmless")
        fake.send(pack(WRONG, *forged, [evil[0]]))  # wrong key
        fake.send(swapped(fake.frames(Kind.MESSAGE, [harmless], "c"), harmless, evil[1]))  # payload swapped
        fake.send(with_version(fake.frames(Kind.MESSAGE, [evil[2]], "c"), b"ZPK9/hmac-sha256"))  # unknown version
        fake.send(direct)  # replayed
        fake.send(routed)
        fake.publish(broadcast)  # a replayed broadcast
        forged_b = (Kind.BROADCAST, 0, 10**6, fake.session.session, NO_SESSION, "", "", "")
        fake.publish(pack(WRONG, *forged_b, [evil[3]], topic=BROADCAST_PREFIX))  # a forged broadcast
        fake.publish(swapped(fake.broadcast([harmless]), harmless, evil[4]))  # a tampered broadcast
        fake.publish([BROADCAST_PREFIX + b"other", *fake.broadcast([evil[5]])[1:]])  # topic frame swapped
        expected = {"bad_signature": 5, "replay": 3, "unknown_version": 1}
        assert wait_until(lambda: {k: v for k, v in window.stats()["rejected"].items() if v} == expected, WAIT), \
            window.stats()["rejected"]
        fake.send(fake.frames(Kind.MESSAGE, [pickle.dumps("still listening")], "c"))
        assert got.wait_for(4, WAIT)[3] == ("direct", "still listening")
        assert len(got) == 4
        assert not any(m.exists() for m in marks)
