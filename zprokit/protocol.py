"""The zprokit wire protocol: frames to messages and back. No sockets here.

A message on the wire is one *head* frame, then any further payload frames::

    [routing id]   only on the ROUTER side, added and removed by ZeroMQ
    head           VERSION | header | inline payload | MAC
    payload ...    further payload frames: out-of-band buffers, large pickles

``VERSION`` (16 bytes, ``b"ZPK4/blake3keyed"``) names the protocol and its
MAC. The header is a fixed struct plus three short strings (``Header``). A
small first payload part (the pickle of a small object) rides inside the
head, so a small request or reply is a single frame, as a raw pyzmq echo is:
on this kind of machine every frame costs several ZeroMQ calls, each with a
system call or two, and frames were most of zprokit's overhead.

Broadcasts on the PUB socket carry one more frame in front, the topic frame
(``b"B" + topic``). It is signed first, where it sits on the wire (so it can
never pass for a payload frame), and repeated in the signed header and compared.

The MAC (the last 32 bytes of the head) covers every frame the receiver
reads, each prefixed with its length so bytes cannot move between frames.
It is checked with ``hmac.compare_digest`` before the header is decoded and
before anything is deserialized.

Replay protection: every node has a random 16-byte session id and a counter
per outgoing stream; a message names its sender's session, its sequence
number and its receiver's session (so nothing recorded before a restart is
valid after it). ``ReplayGuard`` records the highest sequence seen per peer
and stream, only for messages whose signature verified.
"""

from __future__ import annotations

import enum
import hmac
import json
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import blake3

from .errors import ProtocolError

__all__ = [
    "VERSION",
    "Kind",
    "Header",
    "Message",
    "Rejected",
    "Signer",
    "ReplayGuard",
    "pack",
    "fits_one",
    "pack_one",
    "unpack",
    "unpack_one",
    "encode_body",
    "decode_body",
    "NO_SESSION",
    "SESSION_SIZE",
    "DENIED",
    "DENIAL",
    "MAC_SIZE",
    "INLINE_MAX",
    "peek_kind",
    "is_denial",
    "error_body",
    "error_from_body",
    "BROADCAST_PREFIX",
    "CONTROL_PREFIX",
    "HEARTBEAT_TOPIC",
    "wire_size",
]

VERSION = b"ZPK4/blake3keyed"  # ZPK4: CANCEL, READY, UNHANDLED, CREDIT, the PUB heartbeat (ZPK3 had none)
# The MAC key is derived from the shared key (any length) with BLAKE3's key derivation.
_MAC_KEY_CONTEXT = "zprokit 2026-11-24 message authentication, protocol ZPK3"
SESSION_SIZE = 16
MAC_SIZE = 32
NO_SESSION = bytes(SESSION_SIZE)
# A main that cannot verify a handshake answers with this bare, unsigned
# frame: it proves nothing, so a window treats it as "refused", never as data.
DENIED = b"denied"
DENIAL = [VERSION + DENIED]
BROADCAST_PREFIX = b"B"
CONTROL_PREFIX = b"C"
# The main publishes a PING under this topic every heartbeat, numbered with its broadcasts:
# a window that hears nothing on its SUB for heartbeat * liveness knows the link is dead.
HEARTBEAT_TOPIC = b"H"
INLINE_MAX = 64 * 1024  # a first payload part up to this size rides in the head frame
FLAG_INLINE = 0x80  # header flag: the first payload part is inside the head

_FIXED = struct.Struct("<BBQQ16s16sHHHI")
_LEN = struct.Struct("<Q")
_MAX_STR = 0xFFFF
_KINDS: dict[int, "Kind"] = {}


class Kind(enum.IntEnum):
    """What a message is for."""

    HELLO = 1  # window (probe id) -> main: may I have this name?
    WELCOME = 2  # main -> probe: yes; here is my session, PUB port, a nonce
    REFUSE = 3  # main -> probe: no (name in use, serializer mismatch ...)
    REGISTER = 4  # window (named id) -> main: claim the name with the nonce
    REGISTERED = 5  # main -> window: both channels are live
    REQUEST = 10  # a call that wants a REPLY or ERROR with the same msg_id
    MESSAGE = 11  # one-way; window -> main with a target means "route it"
    REPLY = 12
    ERROR = 13
    ACK = 14  # main -> window: the routed MESSAGE reached a live window
    BROADCAST = 15
    PING = 20
    PONG = 21
    BYE = 22  # the sender is closing
    CLOSE = 23  # main -> window: please close
    CANCEL = 24  # the caller of REQUEST msg_id gave up (timed out): do not start it
    READY = 25  # window -> main: its callbacks are registered (create_window's windows)
    UNHANDLED = 26  # window -> main: a one-way message on ``channel`` found no callback
    CREDIT = 27  # window -> main: ``msg_id`` more one-way messages handled: send that many more


_KINDS.update((int(k), k) for k in Kind)


class Rejected(ProtocolError):
    """A message that must be dropped; ``reason`` is the stats counter name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(slots=True)  # not frozen: a frozen dataclass costs microseconds per message to build
class Header:
    kind: Kind
    msg_id: int = 0
    seq: int = 0
    session: bytes = NO_SESSION
    peer_session: bytes = NO_SESSION
    source: str = ""
    target: str = ""
    channel: str = ""
    flags: int = 0  # FLAG_INLINE (0x80) is the framing's own: set and cleared by pack and unpack

    def encode(self, inline: int = -1) -> bytes:
        """The header's bytes; ``inline``: the size of the payload part that follows it in the head, if any."""
        source = self.source.encode()
        target = self.target.encode()
        channel = self.channel.encode()
        if len(source) > _MAX_STR or len(target) > _MAX_STR or len(channel) > _MAX_STR:
            raise ValueError("name, target or channel longer than 65535 bytes")
        if len(self.session) != SESSION_SIZE or len(self.peer_session) != SESSION_SIZE:
            raise ValueError(f"sessions are {SESSION_SIZE} bytes")
        flags = self.flags | FLAG_INLINE if inline >= 0 else self.flags & ~FLAG_INLINE
        fixed = _FIXED.pack(self.kind, flags, self.msg_id, self.seq, self.session, self.peer_session,
                            len(source), len(target), len(channel), max(inline, 0))
        return b"".join((fixed, source, target, channel))

    @classmethod
    def decode(cls, data: bytes | memoryview) -> "Header":
        """A header on its own (no inline payload after it)."""
        header, end, inline = _decode_header(data, 0)
        if end + max(inline, 0) != len(data):
            raise Rejected("malformed", "header length mismatch")
        return header


def _decode_header(data: bytes | memoryview, pos: int) -> tuple[Header, int, int]:
    """The header at ``data[pos:]``, where it ends, and the length of the inline part after it (-1: none)."""
    if len(data) - pos < _FIXED.size:
        raise Rejected("malformed", "header too short")
    kind, flags, msg_id, seq, session, peer, ls, lt, lc, inline = _FIXED.unpack_from(data, pos)
    pos += _FIXED.size
    end = pos + ls + lt + lc
    if end + inline > len(data) or (inline and not flags & FLAG_INLINE):
        raise Rejected("malformed", "header length mismatch")
    try:
        source = str(data[pos : pos + ls], "utf-8") if ls else ""
        pos += ls
        target = str(data[pos : pos + lt], "utf-8") if lt else ""
        pos += lt
        channel = str(data[pos:end], "utf-8") if lc else ""
        kind = _KINDS[kind]
    except (KeyError, UnicodeDecodeError) as e:
        raise Rejected("malformed", f"bad header: {e!r}") from e
    header = Header(kind, msg_id, seq, session, peer, source, target, channel, flags & ~FLAG_INLINE)
    return header, end, inline if flags & FLAG_INLINE else -1


@dataclass(slots=True)  # not frozen, for the same reason as Header
class Message:
    """A verified message: its header and its (still serialized) payload frames."""

    header: Header
    payload: tuple[Any, ...] = ()
    topic: bytes | None = None  # the PUB topic frame, for broadcasts


# Large frames are hashed on every core (BLAKE3 over Rayon's global thread pool), small ones
# on the caller's thread: waking the pool costs more than it saves below a couple of MiB.
# Measured here (2-core AMD EPYC VM, blake3 1.0.11), hashing one frame, GB/s, one thread vs AUTO,
# "idle": after 20 ms without hashing (the pool's threads asleep), "busy": back to back:
#   256 KiB: idle 3.2-3.7 vs 1.6-2.0, busy  9.8 vs 11.5
#     1 MiB: idle 5.9-6.3 vs 4.6-5.4, busy  9.4-9.8 vs 16.8-17.0
#     2 MiB: idle 6.5-7.1 vs 7.6-7.7, busy  9.6 vs 18.1-18.4
#    64 MiB: idle 7.5 vs 13.1-14.0,   busy  7.5-7.7 vs 14.8-15.0
# From 2 MiB the pool wins even when it has to be woken; below, it can lose by half.
_THREADED_MIN = 2 << 20  # a frame at least this large is hashed on the Rayon pool, where it is usable

# Rayon's global pool is started the first time a threaded hash runs, and its threads do not
# survive fork(): in a child of a process that started it, a threaded hash queues work that no
# thread will ever run, and hangs forever. The pool cannot be rebuilt after the fork either, so
# such a child hashes everything on one thread (the same digests: threading never changes a
# BLAKE3 hash). A child whose parent never started the pool starts its own, and may use it.
# Only this module's own use is tracked: another library that starts the pool is not seen.
_rayon_started = False  # this process (or the parent it was forked from) has started the pool
_rayon_usable = True  # False in a child forked after the pool was started


def _after_fork_in_child() -> None:
    global _rayon_usable
    if _rayon_started:
        _rayon_usable = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Signer:
    """Keyed BLAKE3 with a pre-keyed state, copied per message (cheaper than re-keying).

    The MAC covers each frame prefixed with its length (8 bytes, little-endian).
    BLAKE3, not HMAC-SHA256: on this kind of machine HMAC-SHA256 runs at about
    1.2 GB/s, which alone capped a 64 MiB round trip (four passes: sign and
    verify, each way) near a third of raw pyzmq's bandwidth; keyed BLAKE3 runs
    at about 1.5 GB/s on one core and 2.9 GB/s on two, and signs a small
    message in 1.7 µs instead of 2.7.

    Two pre-keyed states: ``_base`` hashes on the caller's thread, and signs
    every message but those with a frame of at least ``_THREADED_MIN`` bytes,
    which ``_threaded`` hashes on every core (Rayon's global pool), unless
    this process was forked from one that had started that pool (it would
    hang; see ``_rayon_started``): there they are hashed on one thread too.
    Both give the same digest.
    """

    __slots__ = ("_base", "_threaded")

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("an empty key signs nothing; give at least one byte")
        mac_key = blake3.blake3(key, derive_key_context=_MAC_KEY_CONTEXT).digest()
        self._base = blake3.blake3(key=mac_key, max_threads=1)  # pack_one and unpack_one copy this one
        self._threaded = blake3.blake3(key=mac_key, max_threads=blake3.blake3.AUTO)

    def sign(self, frames: Sequence[Any]) -> bytes:
        mac = self._base.copy()
        for frame in frames:
            size = memoryview(frame).nbytes
            if size >= _THREADED_MIN and _rayon_usable:
                # Start over on every core. What was hashed so far is wasted, but it is
                # little: a large frame comes right after the head (at most ~64 KiB).
                return self._sign_threaded(frames)
            mac.update(_LEN.pack(size))
            mac.update(frame)
        return mac.digest()

    def _sign_threaded(self, frames: Sequence[Any]) -> bytes:
        global _rayon_started
        _rayon_started = True  # before the hash starts the pool: a fork during it must see this
        mac = self._threaded.copy()
        for frame in frames:
            mac.update(_LEN.pack(memoryview(frame).nbytes))
            mac.update(frame)
        return mac.digest()

    def verify(self, frames: Sequence[Any], signature: bytes | memoryview) -> bool:
        return hmac.compare_digest(self.sign(frames), signature)


def pack(signer: Signer, header: Header, payload: Sequence[Any] = (), topic: bytes | None = None) -> list[Any]:
    """Frames for ``header`` and ``payload``, signed; ``topic`` only for broadcasts.

    A first payload part of at most ``INLINE_MAX`` bytes is copied into the
    head frame; larger ones, and the rest, go as their own frames, uncopied.
    """
    if topic is None and fits_one(payload):
        h = header
        return pack_one(signer, h.kind, h.msg_id, h.seq, h.session, h.peer_session, h.source, h.target,
                        h.channel, payload[0], h.flags)
    rest = list(payload)
    if rest and memoryview(rest[0]).nbytes <= INLINE_MAX:
        first = rest.pop(0)
        body = VERSION + header.encode(memoryview(first).nbytes) + first
    else:
        body = VERSION + header.encode()
    signed: list[Any] = [body, *rest]
    if topic is not None:
        signed.insert(0, topic)  # first, as on the wire: a topic cannot pass for a payload frame
    frames: list[Any] = [body + signer.sign(signed), *rest]
    if topic is not None:
        frames.insert(0, topic)
    return frames


def fits_one(payload: Sequence[Any]) -> bool:
    """True when ``payload`` is one part small enough to ride in the head: ``pack_one`` can pack it."""
    if len(payload) != 1:
        return False
    first = payload[0]
    return (len(first) if type(first) is bytes else memoryview(first).nbytes) <= INLINE_MAX


def pack_one(
    signer: Signer,
    kind: int,
    msg_id: int,
    seq: int,
    session: bytes,
    peer_session: bytes,
    source: str,
    target: str,
    channel: str,
    data: Any,
    flags: int = 0,
) -> list[bytes]:
    """``pack`` for the common message, one payload part of at most ``INLINE_MAX`` bytes, in one frame.

    The same bytes as ``pack(signer, Header(...), [data])``, built without
    the ``Header`` object: this runs for every request and reply.
    """
    src, tgt, chan = source.encode(), target.encode(), channel.encode()
    if len(src) > _MAX_STR or len(tgt) > _MAX_STR or len(chan) > _MAX_STR:
        raise ValueError("name, target or channel longer than 65535 bytes")
    if len(session) != SESSION_SIZE or len(peer_session) != SESSION_SIZE:
        raise ValueError(f"sessions are {SESSION_SIZE} bytes")
    fixed = _FIXED.pack(kind, flags | FLAG_INLINE, msg_id, seq, session, peer_session, len(src), len(tgt), len(chan),
                        len(data) if type(data) is bytes else memoryview(data).nbytes)
    body = b"".join((VERSION, fixed, src, tgt, chan, data))
    mac = signer._base.copy()
    mac.update(_LEN.pack(len(body)))
    mac.update(body)
    return [body + mac.digest()]


def unpack(
    signer: Signer,
    frames: Sequence[Any],
    *,
    max_size: int | None = None,
    with_topic: bool = False,
) -> Message:
    """Verify and split ``frames`` (routing id already removed).

    Raises ``Rejected`` with reason ``malformed``, ``unknown_version``,
    ``oversized`` or ``bad_signature``. Nothing is decoded before the MAC
    checks out, and nothing is deserialized here at all.
    """
    topic = None
    if with_topic:
        if not frames:
            raise Rejected("malformed", "no topic frame")
        topic = bytes(frames[0])
        frames = frames[1:]
    if not frames:
        raise Rejected("malformed", "no frames")
    if len(frames) == 1:  # the common case, one frame (after the topic)
        kind, msg_id, seq, session, peer, source, target, channel, part, flags = unpack_one(
            signer, frames[0], max_size, topic)
        header = Header(kind, msg_id, seq, session, peer, source, target, channel, flags)
        return Message(header, () if part is None else (part,), topic)
    head = memoryview(frames[0])
    if head[: len(VERSION)] != VERSION:
        raise Rejected("unknown_version", repr(bytes(head[: len(VERSION)])))
    if head.nbytes < len(VERSION) + _FIXED.size + MAC_SIZE:
        raise Rejected("malformed", "head frame too short")
    body = head[:-MAC_SIZE]
    if max_size is not None and sum(memoryview(f).nbytes for f in frames) + len(topic or b"") > max_size:
        raise Rejected("oversized")
    signed: list[Any] = [body, *frames[1:]]
    if topic is not None:
        signed.insert(0, topic)
    if not signer.verify(signed, head[-MAC_SIZE:]):
        raise Rejected("bad_signature")
    header, end, inline = _decode_header(body, len(VERSION))
    if inline >= 0:
        if end + inline != len(body):
            raise Rejected("malformed", "inline payload length mismatch")
        payload = (body[end:], *frames[1:])
    else:
        if end != len(body):
            raise Rejected("malformed", "header length mismatch")
        payload = tuple(frames[1:])
    if topic is not None and not _topic_matches(topic, header.kind, header.channel):
        raise Rejected("malformed", "topic frame does not match the signed topic")
    return Message(header, payload, topic)


def unpack_one(
    signer: Signer, frame: Any, max_size: int | None = None, topic: bytes | None = None
) -> tuple[Kind, int, int, bytes, bytes, str, str, str, memoryview | None, int]:
    """``unpack`` for a message of one frame (after its ``topic`` frame, for a broadcast),
    without building objects: this runs for every request, reply and broadcast.

    Returns ``(kind, msg_id, seq, session, peer_session, source, target,
    channel, payload, flags)``, ``payload`` the inline part or None. Raises
    ``Rejected`` as ``unpack`` does, and decodes nothing before the MAC checks out.
    """
    head = memoryview(frame)
    size = head.nbytes
    if head[: len(VERSION)] != VERSION:
        raise Rejected("unknown_version", repr(bytes(head[: len(VERSION)])))
    if size < len(VERSION) + _FIXED.size + MAC_SIZE:
        raise Rejected("malformed", "head frame too short")
    if max_size is not None and size + len(topic or b"") > max_size:
        raise Rejected("oversized")
    body = head[:-MAC_SIZE]
    mac = signer._base.copy()
    if topic is not None:  # signed first, where it sits on the wire
        mac.update(_LEN.pack(len(topic)))
        mac.update(topic)
    mac.update(_LEN.pack(size - MAC_SIZE))
    mac.update(body)
    if not hmac.compare_digest(mac.digest(), head[-MAC_SIZE:]):
        raise Rejected("bad_signature")
    kind, flags, msg_id, seq, session, peer, ls, lt, lc, inline = _FIXED.unpack_from(body, len(VERSION))
    pos = len(VERSION) + _FIXED.size
    end = pos + ls + lt + lc
    if flags & FLAG_INLINE:
        if end + inline != size - MAC_SIZE:
            raise Rejected("malformed", "inline payload length mismatch")
    elif inline or end != size - MAC_SIZE:
        raise Rejected("malformed", "header length mismatch")
    try:
        source = str(body[pos : pos + ls], "utf-8") if ls else ""
        pos += ls
        target = str(body[pos : pos + lt], "utf-8") if lt else ""
        channel = str(body[pos + lt : end], "utf-8") if lc else ""
        kind = _KINDS[kind]
    except (KeyError, UnicodeDecodeError) as e:
        raise Rejected("malformed", f"bad header: {e!r}") from e
    if topic is not None and not _topic_matches(topic, kind, channel):
        raise Rejected("malformed", "topic frame does not match the signed topic")
    part = body[end:] if flags & FLAG_INLINE else None
    return kind, msg_id, seq, session, peer, source, target, channel, part, flags & ~FLAG_INLINE


def _topic_matches(topic: bytes, kind: int, channel: str) -> bool:
    """A PUB message's topic frame agrees with its signed header: a BROADCAST's is ``B`` + its
    topic; the main's broadcast-link heartbeat is a PING under ``H`` alone."""
    if kind == Kind.BROADCAST:
        return topic == BROADCAST_PREFIX + channel.encode()
    return kind == Kind.PING and topic == HEARTBEAT_TOPIC and not channel


def peek_kind(frames: Sequence[Any]) -> "Kind | None":
    """The kind an unverified message claims, or None: only to choose how to refuse it."""
    try:
        head = memoryview(frames[0])
        if head[: len(VERSION)] != VERSION:
            return None
        return _KINDS.get(head[len(VERSION)])
    except (IndexError, TypeError):
        return None


def is_denial(frames: Sequence[Any]) -> bool:
    """True for the bare refusal a main sends when it cannot verify a handshake."""
    return len(frames) == 1 and bytes(frames[0]) == DENIAL[0]


def encode_body(body: dict[str, Any]) -> bytes:
    """Control-message bodies (handshake, errors) are JSON: no pickle before trust."""
    return json.dumps(body, separators=(",", ":")).encode()


def decode_body(payload: Sequence[Any]) -> dict[str, Any]:
    if len(payload) != 1:
        raise Rejected("malformed", "control body must be one frame")
    try:
        body = json.loads(bytes(payload[0]))
    except (ValueError, UnicodeDecodeError) as e:
        raise Rejected("malformed", "control body is not JSON") from e
    if not isinstance(body, dict):
        raise Rejected("malformed", "control body is not an object")
    return body


class ReplayGuard:
    """Per peer and stream: the live session and the highest sequence number seen.

    ``accept`` must only be called for messages whose signature verified. A
    peer's session changes only when it re-registers (``new_session``); a
    session once replaced is remembered as retired and never accepted again,
    so a recorded message of an earlier incarnation cannot be replayed.
    Memory is bounded: at most ``max_retired`` retired sessions (and as many
    handshake sessions, see ``first_hello``) are kept.
    """

    def __init__(self, max_retired: int = 4096) -> None:
        self._live: dict[tuple[str, int], tuple[bytes, int]] = {}
        self._retired: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._hellos: OrderedDict[bytes, None] = OrderedDict()
        self._max_retired = max_retired

    def first_hello(self, session: bytes) -> bool:
        """True the first time a handshake from ``session`` is seen; False for a replayed HELLO.

        Every handshake starts a new session, so a HELLO is never legitimately
        sent twice. The last ``max_retired`` sessions are remembered.
        """
        if session in self._hellos:
            return False
        self._hellos[session] = None
        if len(self._hellos) > self._max_retired:
            self._hellos.popitem(last=False)
        return True

    def is_retired(self, peer: str, session: bytes) -> bool:
        return (peer, session) in self._retired

    def new_session(self, peer: str, session: bytes, seq: int, stream: int = 0) -> bool:
        """Start tracking a new incarnation of ``peer``; False if it was retired."""
        if (peer, session) in self._retired:
            return False
        for key in [k for k in self._live if k[0] == peer]:
            old_session, _ = self._live[key]
            if old_session != session:
                del self._live[key]
                self._retire(peer, old_session)
        last = self._live.get((peer, stream))
        self._live[(peer, stream)] = (session, seq if last is None else max(seq, last[1]))
        return True

    def accept(self, peer: str, session: bytes, seq: int, stream: int = 0) -> bool:
        """True (and recorded) if ``seq`` is new for the peer's live session."""
        live = self._live.get((peer, stream))
        if live is None:
            other = next((s for (p, _), (s, _) in self._live.items() if p == peer), None)
            if other != session:
                return False
            self._live[(peer, stream)] = (session, seq)
            return True
        live_session, last = live
        if session != live_session or seq <= last:
            return False
        self._live[(peer, stream)] = (session, seq)
        return True

    def forget(self, peer: str) -> None:
        """The peer left: retire its session so its messages cannot come back."""
        for key in [k for k in self._live if k[0] == peer]:
            session, _ = self._live.pop(key)
            self._retire(peer, session)

    def _retire(self, peer: str, session: bytes) -> None:
        self._retired[(peer, session)] = None
        while len(self._retired) > self._max_retired:
            self._retired.popitem(last=False)


def error_body(exc: BaseException, origin: str, traceback_text: str = "", *, from_handler: bool = False) -> dict[str, Any]:
    """The JSON body of an ERROR reply for ``exc`` raised while serving a request.

    ``from_handler``: ``exc`` came out of a user's handler, so its caller gets a
    ``RemoteError`` whatever its type. A ``NoHandler`` or ``WindowNotFound`` that a
    handler's own nested request raised must not tell the caller that *its*
    channel or target is missing. (A ``RemoteError`` is still passed on as it
    was, so it keeps the origin and traceback of where it was raised.)
    """
    from . import errors

    body: dict[str, Any] = {"origin": origin, "message": str(exc)}
    if from_handler and not isinstance(exc, errors.RemoteError):
        body.update(code="remote", type=_type_name(exc), traceback=traceback_text)
    elif isinstance(exc, errors.NoHandler):
        body.update(code="no_handler", channel=exc.channel, node=exc.node)
    elif isinstance(exc, errors.WindowNotFound):
        body.update(code="window_not_found", name=exc.name)
    elif isinstance(exc, errors.PeerLost):
        body.update(code="peer_lost")
    elif isinstance(exc, errors.QueueFull):
        body.update(code="queue_full", peer=exc.peer)
    elif isinstance(exc, errors.MessageTooLarge):
        body.update(code="too_large", size=exc.size, limit=exc.limit, peer=exc.peer)
    elif isinstance(exc, errors.RemoteError):
        body.update(
            code="remote",
            type=exc.remote_type,
            message=exc.remote_message,
            traceback=exc.remote_traceback,
            origin=exc.origin,
        )
    else:
        body.update(code="remote", type=_type_name(exc), traceback=traceback_text)
    return body


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def error_from_body(body: dict[str, Any]) -> Exception:
    """The exception a caller sees for an ERROR reply's body."""
    from . import errors

    code = body.get("code")
    message = str(body.get("message", ""))
    if code == "no_handler":
        return errors.NoHandler(str(body.get("channel", "")), str(body.get("node", "")), message or None)
    if code == "window_not_found":
        return errors.WindowNotFound(str(body.get("name", "")), message or None)
    if code == "peer_lost":
        return errors.PeerLost(message)
    if code == "too_large":
        return errors.MessageTooLarge(_int(body.get("size")), _int(body.get("limit")), str(body.get("peer", "")),
                                      message or None)
    if code == "queue_full":
        return errors.QueueFull(str(body.get("peer", "")), message or None)
    return errors.RemoteError(
        str(body.get("type", "Exception")),
        message,
        str(body.get("traceback", "")),
        str(body.get("origin", "")),
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def wire_size(payload: Sequence[Any], source: str, target: str, channel: str) -> int:
    """The bytes a message of ``payload`` takes on the wire (the routing id and topic apart):
    what a receiver's size limit is compared with, so a sender can check before it sends."""
    names = len(source.encode()) + len(target.encode()) + len(channel.encode())
    return len(VERSION) + _FIXED.size + names + MAC_SIZE + sum(memoryview(part).nbytes for part in payload)
