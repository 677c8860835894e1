"""The zprokit wire protocol: frames to messages and back. No sockets here.

A message on the wire is a list of frames::

    [routing id]   only on the ROUTER side, added and removed by ZeroMQ
    version        b"ZPK1/hmac-sha256": protocol and MAC in one name
    header         fixed struct + three short strings (see ``Header``)
    signature      HMAC-SHA256 over version, header and every payload frame
    payload ...    serializer output: the pickle, then its out-of-band buffers

Broadcasts on the PUB socket carry one more frame in front, the topic frame
(``b"B" + topic``). It is signed first, where it sits on the wire (so it can
never pass for a payload frame), and repeated in the signed header and compared.

The MAC covers every frame the receiver reads, each prefixed with its length
so bytes cannot move between frames. It is checked with
``hmac.compare_digest`` before anything is deserialized.

Replay protection: every node has a random 16-byte session id and a counter
per outgoing stream; a message names its sender's session, its sequence
number and its receiver's session (so nothing recorded before a restart is
valid after it). ``ReplayGuard`` records the highest sequence seen per peer
and stream, only for messages whose signature verified.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

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
    "unpack",
    "encode_body",
    "decode_body",
    "NO_SESSION",
    "SESSION_SIZE",
    "DENIED",
    "is_denial",
    "error_body",
    "error_from_body",
    "BROADCAST_PREFIX",
    "CONTROL_PREFIX",
]

VERSION = b"ZPK1/hmac-sha256"
SESSION_SIZE = 16
NO_SESSION = bytes(SESSION_SIZE)
# A main that cannot verify a handshake answers with this bare, unsigned pair
# of frames: it proves nothing, so a window treats it as "refused", never as data.
DENIED = b"denied"
BROADCAST_PREFIX = b"B"
CONTROL_PREFIX = b"C"

_FIXED = struct.Struct("<BBQQ16s16sHHH")
_LEN = struct.Struct("<Q")
_MAX_STR = 0xFFFF


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


class Rejected(ProtocolError):
    """A message that must be dropped; ``reason`` is the stats counter name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True, slots=True)
class Header:
    kind: Kind
    msg_id: int = 0
    seq: int = 0
    session: bytes = NO_SESSION
    peer_session: bytes = NO_SESSION
    source: str = ""
    target: str = ""
    channel: str = ""
    flags: int = 0

    def encode(self) -> bytes:
        source = self.source.encode()
        target = self.target.encode()
        channel = self.channel.encode()
        if max(len(source), len(target), len(channel)) > _MAX_STR:
            raise ValueError("name, target or channel longer than 65535 bytes")
        if len(self.session) != SESSION_SIZE or len(self.peer_session) != SESSION_SIZE:
            raise ValueError(f"sessions are {SESSION_SIZE} bytes")
        return (
            _FIXED.pack(
                self.kind,
                self.flags,
                self.msg_id,
                self.seq,
                self.session,
                self.peer_session,
                len(source),
                len(target),
                len(channel),
            )
            + source
            + target
            + channel
        )

    @classmethod
    def decode(cls, data: bytes | memoryview) -> "Header":
        data = bytes(data)
        if len(data) < _FIXED.size:
            raise Rejected("malformed", "header too short")
        kind, flags, msg_id, seq, session, peer, ls, lt, lc = _FIXED.unpack_from(data)
        if len(data) != _FIXED.size + ls + lt + lc:
            raise Rejected("malformed", "header length mismatch")
        try:
            kind = Kind(kind)
            pos = _FIXED.size
            source = data[pos : pos + ls].decode()
            pos += ls
            target = data[pos : pos + lt].decode()
            pos += lt
            channel = data[pos : pos + lc].decode()
        except (ValueError, UnicodeDecodeError) as e:
            raise Rejected("malformed", str(e)) from e
        return cls(kind, msg_id, seq, session, peer, source, target, channel, flags)


@dataclass(frozen=True, slots=True)
class Message:
    """A verified message: its header and its (still serialized) payload frames."""

    header: Header
    payload: tuple[Any, ...] = ()
    topic: bytes | None = None  # the PUB topic frame, for broadcasts


class Signer:
    """HMAC-SHA256 with a pre-keyed state, copied per message (cheaper than re-keying)."""

    __slots__ = ("_base",)
    digest_size = 32

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("an empty key signs nothing; give at least one byte")
        self._base = hmac.new(key, digestmod=hashlib.sha256)

    def sign(self, frames: Sequence[Any]) -> bytes:
        mac = self._base.copy()
        for frame in frames:
            mac.update(_LEN.pack(memoryview(frame).nbytes))
            mac.update(frame)
        return mac.digest()

    def verify(self, frames: Sequence[Any], signature: bytes | memoryview) -> bool:
        return hmac.compare_digest(self.sign(frames), bytes(signature))


def pack(signer: Signer, header: Header, payload: Sequence[Any] = (), topic: bytes | None = None) -> list[Any]:
    """Frames for ``header`` and ``payload``, signed; ``topic`` only for broadcasts."""
    head = header.encode()
    signed: list[Any] = [VERSION, head, *payload]
    if topic is not None:
        signed.insert(0, topic)  # first, as on the wire: a topic cannot pass for a payload frame
    signature = signer.sign(signed)
    frames: list[Any] = [VERSION, head, signature, *payload]
    if topic is not None:
        frames.insert(0, topic)
    return frames


def unpack(
    signer: Signer,
    frames: Sequence[Any],
    *,
    max_size: int | None = None,
    with_topic: bool = False,
) -> Message:
    """Verify and split ``frames`` (routing id already removed).

    Raises ``Rejected`` with reason ``malformed``, ``unknown_version``,
    ``oversized`` or ``bad_signature``. Nothing is deserialized here, and the
    payload is returned only after its signature checked out.
    """
    topic = None
    if with_topic:
        if not frames:
            raise Rejected("malformed", "no topic frame")
        topic = bytes(frames[0])
        frames = frames[1:]
    if len(frames) < 3:
        if len(frames) >= 1 and bytes(frames[0]) != VERSION:
            raise Rejected("unknown_version", repr(bytes(frames[0])[:32]))
        raise Rejected("malformed", f"{len(frames)} frames, need at least 3")
    version, head, signature = frames[0], frames[1], frames[2]
    if bytes(version) != VERSION:
        raise Rejected("unknown_version", repr(bytes(version)[:32]))
    if max_size is not None and sum(memoryview(f).nbytes for f in frames) + len(topic or b"") > max_size:
        raise Rejected("oversized")
    payload = tuple(frames[3:])
    signed: list[Any] = [version, head, *payload]
    if topic is not None:
        signed.insert(0, topic)
    if memoryview(signature).nbytes != Signer.digest_size or not signer.verify(signed, signature):
        raise Rejected("bad_signature")
    header = Header.decode(head)
    if topic is not None and (header.kind != Kind.BROADCAST or topic != BROADCAST_PREFIX + header.channel.encode()):
        raise Rejected("malformed", "topic frame does not match the signed topic")
    return Message(header, payload, topic)


def is_denial(frames: Sequence[Any]) -> bool:
    """True for the bare refusal a main sends when it cannot verify a handshake."""
    return len(frames) == 2 and bytes(frames[0]) == VERSION and bytes(frames[1]) == DENIED


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
    Memory is bounded: at most ``max_retired`` retired sessions are kept.
    """

    def __init__(self, max_retired: int = 4096) -> None:
        self._live: dict[tuple[str, int], tuple[bytes, int]] = {}
        self._retired: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._max_retired = max_retired

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
    return errors.RemoteError(
        str(body.get("type", "Exception")),
        message,
        str(body.get("traceback", "")),
        str(body.get("origin", "")),
    )
