"""The zprokit wire protocol: frames to messages and back. No sockets here.

A message on the wire is one *head* frame, then any further payload frames::

    [routing id]   only on the ROUTER side, added and removed by ZeroMQ
    head           VERSION | header | inline payload | MAC
    payload ...    further payload frames: out-of-band buffers, large pickles

``VERSION`` (16 bytes, ``b"ZPK4/blake3keyed"``) names the protocol and its
MAC. The header is a fixed struct plus three short strings. A
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
valid after it). The rules that use those fields (``ReplayGuard``, who may
send what) are the session's: ``zprokit.session``.

``pack`` and ``unpack`` are the only way in and out: every message kind, on
every socket, takes the same path, and every check is made in one place.
"""

from __future__ import annotations

import enum
import hmac
import json
import os
import struct
import traceback
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, overload

import blake3

from .errors import ProtocolError

__all__ = [
    "VERSION",
    "Kind",
    "Message",
    "Rejected",
    "Signer",
    "pack",
    "unpack",
    "routing_id",
    "normalize_name",
    "check_window_name",
    "MAX_NAME_BYTES",
    "FLAG_GROUP",
    "MAX_GROUPS",
    "MAX_GROUP_BYTES",
    "check_group_name",
    "check_groups",
    "split_routing_id",
    "routing_name",
    "split_control_topic",
    "control_topic",
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
    "handler_error",
    "BROADCAST_PREFIX",
    "CONTROL_PREFIX",
    "HEARTBEAT_TOPIC",
    "wire_size",
]

VERSION = b"ZPK6/blake3keyed"  # ZPK6: BATCH. ZPK5: the header carries timeout_ms and count; streams, group calls (ZPK4: CANCEL ...)
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
FLAG_INLINE = 0x80  # header flag: the first payload part is inside the head (the framing's own)
FLAG_GROUP = 0x01  # header flag: ``target`` names a group of windows, not one window (call_any)

_FIXED = struct.Struct("<BBQQ16s16sHHHIII")
_MIN_HEAD = 16 + _FIXED.size + 32  # VERSION, the fixed header, the MAC
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
    STREAM = 28  # a call that wants a stream of ITEMs then END; ``count``: the items it may send ahead
    ITEM = 29  # one item of stream ``msg_id``
    END = 30  # stream ``msg_id`` is over: no payload, or an error body (JSON) as ERROR has
    MORE = 31  # the consumer of stream ``msg_id`` took ``count`` more items: send that many more
    BATCH = 32  # ``count`` messages in one (see ``batch_item``): one frame, one MAC, one number


_KINDS.update((int(k), k) for k in Kind)


class Rejected(ProtocolError):
    """A message that must be dropped; ``reason`` is the stats counter name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(slots=True)  # not frozen: a frozen dataclass costs microseconds per message to build
class Message:
    """A verified message, as ``unpack`` returns it: the header's fields and the (still
    serialized) payload parts. (A broadcast's topic frame was checked against ``channel``.)"""

    kind: Kind
    msg_id: int = 0
    seq: int = 0
    session: bytes = NO_SESSION
    peer_session: bytes = NO_SESSION
    source: str = ""
    target: str = ""
    channel: str = ""
    payload: tuple[Any, ...] = ()
    timeout_ms: int = 0  # REQUEST, STREAM: the caller's timeout in ms (0: none), for the handler's deadline
    count: int = 0  # STREAM, MORE: items of credit; a group REQUEST: how many times it may be retried
    flags: int = 0  # FLAG_GROUP (FLAG_INLINE is the framing's own and never shows here)


# A window's routing id is b"name\0" + a 32-character nonce (routing_id), and ZeroMQ allows 255 bytes.
MAX_NAME_BYTES = 255 - 1 - 32


@overload
def normalize_name(name: str) -> str: ...


@overload
def normalize_name(name: Any) -> Any: ...


def normalize_name(name: Any) -> Any:
    """``name`` in Unicode normal form NFC, so "café" typed either way is one window; a non-str as it is."""
    if isinstance(name, str) and not name.isascii():
        return unicodedata.normalize("NFC", name)
    return name


def check_window_name(name: Any) -> str | None:
    """Why ``name`` cannot be a window's name, or None if it can."""
    return _check_name(name, "a window name", MAX_NAME_BYTES)


def _check_name(name: Any, what: str, limit: int) -> str | None:
    """Why ``name`` cannot be ``what`` (a window's or a group's name), or None if it can."""
    if not isinstance(name, str) or not name:
        return f"{what} must be a non-empty string"
    if "\0" in name:
        return f"{what} cannot contain NUL"
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        return f"{what} must be valid Unicode (no lone surrogates)"
    if size > limit:
        return f"{what} is at most {limit} bytes of UTF-8 (this one is {size})"
    return None


MAX_GROUPS = 64  # groups a window may join: its HELLO stays small, and so does the main's index
MAX_GROUP_BYTES = 255


def check_group_name(group: Any) -> str | None:
    """Why ``group`` cannot name a group of windows, or None if it can."""
    return _check_name(group, "a group name", MAX_GROUP_BYTES)


def check_groups(groups: Any) -> str | None:
    """Why ``groups`` (a list or tuple of names) cannot be the groups a window joins, or None if it can."""
    if not isinstance(groups, (list, tuple)):
        return "groups must be a list of group names"
    if len(groups) > MAX_GROUPS:
        return f"a window joins at most {MAX_GROUPS} groups (this one asks for {len(groups)})"
    for group in groups:
        problem = check_group_name(group)
        if problem:
            return problem
    return None


def routing_id(name: str, nonce: str) -> bytes:
    """A window's DEALER routing id, ``name NUL nonce``: the nonce (from WELCOME) keeps anyone
    who can merely connect from claiming the window's route (``ROUTER_HANDOVER`` gives a
    routing id to whoever claims it last)."""
    return f"{name}\0{nonce}".encode()


def split_routing_id(ident: bytes) -> tuple[str, str]:
    """``(name, nonce)`` of a routing id; raises ``Rejected`` if the name is not UTF-8. (A nonce
    that is not is only ever compared, and never equals one the main gave.)"""
    name, _, nonce = ident.partition(b"\0")
    try:
        return name.decode(), nonce.decode(errors="replace")
    except UnicodeDecodeError:
        raise Rejected("malformed", "routing id is not UTF-8") from None


def routing_name(ident: bytes) -> bytes:
    """The name half of a routing id, as bytes: for comparing with a name, or quoting in an error."""
    return ident.partition(b"\0")[0]


def split_control_topic(topic: bytes) -> tuple[str, str] | None:
    """``(name, nonce)`` of a control topic (``control_topic``), or None if it is not one."""
    if not topic.startswith(CONTROL_PREFIX):
        return None
    name, _, nonce = topic[len(CONTROL_PREFIX):].partition(b"\0")
    return name.decode(errors="replace"), nonce.decode(errors="replace")


def control_topic(name: str, nonce: str) -> bytes:
    """The PUB topic a joining window subscribes to last: when the main sees it, the window's
    other subscriptions are in force too."""
    return CONTROL_PREFIX + routing_id(name, nonce)


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
        self._base = blake3.blake3(key=mac_key, max_threads=1)
        self._threaded = blake3.blake3(key=mac_key, max_threads=blake3.blake3.AUTO)

    def sign(self, head: Any, rest: Sequence[Any] = (), topic: bytes | None = None) -> bytes:
        """The MAC of a message: its ``topic`` frame (broadcasts), the ``head`` frame without
        its MAC, then the ``rest`` of its frames, each prefixed with its length."""
        mac = self._base.copy()
        if topic is not None:  # signed first, where it sits on the wire
            mac.update(_LEN.pack(len(topic)))
            mac.update(topic)
        mac.update(_LEN.pack(len(head) if type(head) is bytes else memoryview(head).nbytes))
        mac.update(head)
        if rest:
            for frame in rest:
                size = memoryview(frame).nbytes
                if size >= _THREADED_MIN and _rayon_usable:
                    # Start over on every core. What was hashed so far is wasted, but it is
                    # little: a large frame comes right after the head (at most ~64 KiB).
                    return self._sign_threaded([*([topic] if topic is not None else []), head, *rest])
                mac.update(_LEN.pack(size))
                mac.update(frame)
        return mac.digest()

    def _mac_of_head(self, body: Any, size: int) -> bytes:
        """``sign(body)`` for a message of one frame and no topic (most): ``size`` is len(body)."""
        mac = self._base.copy()
        mac.update(_LEN.pack(size))
        mac.update(body)
        return mac.digest()

    def _sign_threaded(self, frames: Sequence[Any]) -> bytes:
        global _rayon_started
        _rayon_started = True  # before the hash starts the pool: a fork during it must see this
        mac = self._threaded.copy()
        for frame in frames:
            mac.update(_LEN.pack(memoryview(frame).nbytes))
            mac.update(frame)
        return mac.digest()


def pack(
    signer: Signer,
    kind: int,
    msg_id: int = 0,
    seq: int = 0,
    session: bytes = NO_SESSION,
    peer_session: bytes = NO_SESSION,
    source: str = "",
    target: str = "",
    channel: str = "",
    payload: Sequence[Any] = (),
    topic: bytes | None = None,
    *,
    timeout_ms: int = 0,
    count: int = 0,
    flags: int = 0,
) -> list[Any]:
    """The signed frames of a message; ``topic`` (the PUB topic frame) only for broadcasts.

    A first payload part of at most ``INLINE_MAX`` bytes is copied into the
    head frame, so a small request or reply is one frame; larger parts, and
    the rest, go as their own frames, uncopied.
    """
    src, tgt, chan = source.encode(), target.encode(), channel.encode()
    if len(src) > _MAX_STR or len(tgt) > _MAX_STR or len(chan) > _MAX_STR:
        raise ValueError("name, target or channel longer than 65535 bytes")
    if len(session) != SESSION_SIZE or len(peer_session) != SESSION_SIZE:
        raise ValueError(f"sessions are {SESSION_SIZE} bytes")
    rest: Sequence[Any] = payload
    first: Any = b""
    flags &= ~FLAG_INLINE
    inline = 0
    if payload:
        first = payload[0]
        inline = len(first) if type(first) is bytes else memoryview(first).nbytes
        if inline <= INLINE_MAX:
            flags, rest = flags | FLAG_INLINE, payload[1:] if len(payload) > 1 else ()
        else:
            first, inline = b"", 0
    fixed = _FIXED.pack(kind, flags, msg_id, seq, session, peer_session, len(src), len(tgt), len(chan), inline,
                        timeout_ms, count)
    body = b"".join((VERSION, fixed, src, tgt, chan, first))
    if not rest and topic is None:  # one frame: most messages
        return [body + signer._mac_of_head(body, len(body))]
    head = body + signer.sign(body, rest, topic)
    if topic is not None:
        return [topic, head, *rest]
    return [head, *rest]


# A message inside a BATCH: kind, flags, msg_id, the lengths of source, target, channel and
# payload, timeout_ms, count; then source, target, channel and the payload (one part).
_ITEM = struct.Struct("<BBQHHHIII")
# What may travel in a BATCH: answers, and what is routed or asked in runs. Never a handshake,
# control or stream message, and never a BATCH.
BATCHABLE = frozenset({Kind.REQUEST, Kind.MESSAGE, Kind.REPLY, Kind.ERROR, Kind.ACK})
BATCH_MAX = INLINE_MAX  # the records of a BATCH, in bytes: its payload rides in its head frame
# A BATCH's own bytes beside its records: VERSION, the fixed header, two names (at most 255 bytes
# each) and the MAC, with room to spare.
_BATCH_HEADROOM = 1024
BATCH_RECORD = _ITEM.size  # a record's bytes beside its strings and payload


def batch_room(max_size: int | None) -> int:
    """The bytes of records a BATCH may carry to a peer that reads messages of at most
    ``max_size`` bytes (``None``: no limit): it must stay one frame, and be read."""
    return BATCH_MAX if max_size is None else min(BATCH_MAX, max_size - _BATCH_HEADROOM)


def batch_runs(sizes: Sequence[int | None], room: int) -> Iterator[tuple[int, int]]:
    """Cut messages whose records take ``sizes`` bytes (``None``: one that cannot travel in a
    batch), in order, into runs ``(start, end)`` whose records fit in ``room`` bytes. A run of
    one message leaves alone, as itself; so does one that does not fit or cannot travel."""
    start, used = 0, 0
    for i, size in enumerate(sizes):
        if size is None or size > room:  # alone, after what came before it
            if start < i:
                yield start, i
            yield i, i + 1
            start, used = i + 1, 0
            continue
        if start < i and used + size > room:
            yield start, i
            start, used = i, 0
        used += size
    if start < len(sizes):
        yield start, len(sizes)


def batch_item(kind: int, msg_id: int, data: Any, source: str = "", target: str = "", channel: str = "", *,
               timeout_ms: int = 0, count: int = 0, flags: int = 0) -> bytes:
    """One message's record for a BATCH: its header's fields and its payload ``data``, one
    serialized part (bytes-like). A BATCH is ``pack(..., Kind.BATCH, payload=[b"".join(records)],
    count=len(records))``: what is ready together leaves as one frame, with one MAC."""
    src, tgt, chan = source.encode(), target.encode(), channel.encode()
    size = len(data) if type(data) is bytes else memoryview(data).nbytes
    if len(src) > _MAX_STR or len(tgt) > _MAX_STR or len(chan) > _MAX_STR:
        raise ValueError("name, target or channel longer than 65535 bytes")
    return b"".join((_ITEM.pack(kind, flags & ~FLAG_INLINE, msg_id, len(src), len(tgt), len(chan), size,
                                timeout_ms, count), src, tgt, chan, data))


def unbatch(batch: Message) -> list[Message]:
    """The messages a verified BATCH carries, in order, each with the batch's number and
    sessions (the batch was admitted once, for all of them). Raises ``Rejected("malformed")``
    for a record that does not add up, a kind that may not travel in a batch, or a count
    that does not match."""
    if len(batch.payload) != 1:
        raise Rejected("malformed", "a batch is one part")
    data = memoryview(batch.payload[0])
    size, pos, out = data.nbytes, 0, []
    seq, session, peer = batch.seq, batch.session, batch.peer_session
    try:
        while pos < size:
            kind, flags, msg_id, ls, lt, lc, n, timeout_ms, count = _ITEM.unpack_from(data, pos)
            pos += _ITEM.size
            end = pos + ls + lt + lc + n
            if end > size:
                raise Rejected("malformed", "a batch record runs past its end")
            source = str(data[pos : pos + ls], "utf-8") if ls else ""
            pos += ls
            target = str(data[pos : pos + lt], "utf-8") if lt else ""
            pos += lt
            channel = str(data[pos : pos + lc], "utf-8") if lc else ""
            pos += lc
            item = _KINDS[kind]
            if flags & FLAG_INLINE:
                raise Rejected("malformed", "the inline flag in a batch record")
            if item not in BATCHABLE:
                raise Rejected("malformed", f"{item.name} in a batch")
            out.append(Message(item, msg_id, seq, session, peer, source, target, channel, (data[pos:end],),
                               timeout_ms, count, flags))
            pos = end
    except (struct.error, KeyError, UnicodeDecodeError) as e:
        raise Rejected("malformed", f"bad batch record: {e!r}") from e
    if len(out) != batch.count or not out:
        raise Rejected("malformed", f"a batch of {batch.count} carries {len(out)}")
    return out


def unpack(signer: Signer, frames: Sequence[Any], *, max_size: int | None = None, topic: bytes | None = None) -> Message:
    """Verify and split a message's ``frames`` (the routing id and, on the PUB, the ``topic``
    frame already taken off; the topic is passed, as it is signed).

    Raises ``Rejected`` with reason ``malformed``, ``unknown_version``,
    ``oversized`` or ``bad_signature``. Nothing is decoded before the MAC
    checks out, and nothing is deserialized here at all.
    """
    if not frames:
        raise Rejected("malformed", "no frames")
    head = memoryview(frames[0])
    size = head.nbytes
    if head[: len(VERSION)] != VERSION:
        raise Rejected("unknown_version", repr(bytes(head[: len(VERSION)])))
    if size < _MIN_HEAD:
        raise Rejected("malformed", "head frame too short")
    rest = frames[1:] if len(frames) > 1 else ()
    if max_size is not None:
        total = size + (len(topic) if topic is not None else 0)
        for frame in rest:
            total += memoryview(frame).nbytes
        if total > max_size:
            raise Rejected("oversized")
    body = head[:-MAC_SIZE]
    if rest or topic is not None:
        mac = signer.sign(body, rest, topic)
    else:  # one frame: most messages
        mac = signer._mac_of_head(body, size - MAC_SIZE)
    if not hmac.compare_digest(mac, head[-MAC_SIZE:]):
        raise Rejected("bad_signature")
    kind, flags, msg_id, seq, session, peer, ls, lt, lc, inline, timeout_ms, count = _FIXED.unpack_from(
        body, len(VERSION))
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
    if flags & FLAG_INLINE:
        payload = (body[end:], *rest) if rest else (body[end:],)
    else:
        payload = tuple(rest)
    return Message(kind, msg_id, seq, session, peer, source, target, channel, payload, timeout_ms, count,
                   flags & ~FLAG_INLINE)


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


def handler_error(exc: BaseException, origin: str) -> list[bytes]:
    """The payload of an ERROR (or of a failed stream's END) for what a user's handler raised:
    its caller gets a ``RemoteError`` with the handler's traceback."""
    return [encode_body(error_body(exc, origin, "".join(traceback.format_exception(exc)), from_handler=True))]


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
