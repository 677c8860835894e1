"""The wire protocol without sockets: framing, MAC, rejection reasons, replay guard, bodies."""

from __future__ import annotations

import os
import pathlib
import pickle

import pytest

from zprokit import errors
from zprokit.protocol import (
    BROADCAST_PREFIX, DENIAL, DENIED, INLINE_MAX, MAC_SIZE, NO_SESSION, VERSION, Header, Kind, Rejected,
    ReplayGuard, Signer, decode_body, encode_body, error_body, error_from_body, is_denial, pack, pack_one, unpack,
    unpack_one,
)

pytestmark = pytest.mark.timeout(10)

KEY = b"test key"
SIGNER = Signer(KEY)
S1, S2, S3 = os.urandom(16), os.urandom(16), os.urandom(16)
FULL = Header(Kind.REQUEST, msg_id=2**64 - 1, seq=7, session=S1, peer_session=S2,
              source="fenêtre-1", target="主", channel="κανάλι/✓", flags=0x7F)


def flip(frame, at: int | None = None) -> bytes:
    data = bytearray(frame)
    data[len(data) // 2 if at is None else at] ^= 0x01
    return bytes(data)


def reason(frames, **kw) -> str:
    with pytest.raises(Rejected) as info:
        unpack(SIGNER, frames, **kw)
    return info.value.reason


def signed(head: bytes, *payload: bytes) -> list[bytes]:
    """A message whose MAC is valid whatever the header says: only the parser can refuse it."""
    body = VERSION + head
    return [body + SIGNER.sign([body, *payload]), *payload]


# --- round trips ---------------------------------------------------------------------------

def test_header_round_trip_keeps_every_field():
    assert Header.decode(FULL.encode()) == FULL
    assert Header.decode(memoryview(Header(Kind.PING).encode())) == Header(Kind.PING)
    assert Header(Kind.PING).session == NO_SESSION == bytes(16)


def test_header_encode_refuses_what_it_cannot_represent():
    with pytest.raises(ValueError):
        Header(Kind.MESSAGE, channel="x" * 65536).encode()
    with pytest.raises(ValueError):  # "16s" would silently pad or truncate
        Header(Kind.MESSAGE, session=b"short").encode()


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("payload", [(), (b"",), (b"pickle", b"", bytes(range(256)) * 64)])
def test_pack_unpack_round_trip(kind, payload):
    header = Header(kind, msg_id=42, seq=3, session=S1, source="wïn", target="main", channel="ch/ü")
    msg = unpack(SIGNER, pack(SIGNER, header, payload))
    assert msg.header == header
    assert [bytes(f) for f in msg.payload] == list(payload)
    assert msg.topic is None


def test_broadcast_round_trip_with_unicode_topic():
    header = Header(Kind.BROADCAST, seq=1, session=S1, source="main", channel="météo/☂")
    topic = BROADCAST_PREFIX + header.channel.encode()
    frames = pack(SIGNER, header, [memoryview(b"a"), bytearray(b"b")], topic=topic)
    assert bytes(frames[0]) == topic
    msg = unpack(SIGNER, frames, with_topic=True)
    assert (msg.header, msg.topic, [bytes(f) for f in msg.payload]) == (header, topic, [b"a", b"b"])


def test_the_one_frame_fast_paths_agree_with_the_general_ones():
    # pack_one and unpack_one serve every request and reply: they must be pack and unpack, faster.
    h = FULL
    one = pack_one(SIGNER, h.kind, h.msg_id, h.seq, h.session, h.peer_session, h.source, h.target, h.channel,
                   b"payload", h.flags)
    assert one == pack(SIGNER, FULL, [b"payload"]) and len(one) == 1
    fields = unpack_one(SIGNER, one[0])
    assert Header(*fields[:8], fields[9]) == FULL and bytes(fields[8]) == b"payload"
    msg = unpack(SIGNER, one)
    assert msg.header == FULL and [bytes(p) for p in msg.payload] == [b"payload"]
    bare = pack(SIGNER, Header(Kind.PING, seq=1, session=S1))
    assert unpack_one(SIGNER, bare[0])[8] is None  # no payload at all, not an empty one
    topic, head = BCAST  # a broadcast: the topic frame is signed first, and must match the header's
    fields = unpack_one(SIGNER, head, topic=topic)
    assert Header(*fields[:8], fields[9]) == BCAST_HEADER and bytes(fields[8]) == b"payload"
    for wrong in (b"Bnewz", b"news", b""):
        with pytest.raises(Rejected, match="bad_signature"):
            unpack_one(SIGNER, head, topic=wrong)
    forged = pack(SIGNER, Header(Kind.BROADCAST, seq=9, session=S1, channel="other"), [b"p"], topic=b"Bnews")
    with pytest.raises(Rejected, match="malformed"):  # signed, but its topic is not its header's
        unpack_one(SIGNER, forged[1], topic=forged[0])


def test_unpack_one_refuses_what_unpack_refuses():
    one = pack(SIGNER, FULL, [b"payload"])[0]
    for bad, why in [(flip(one, 0), "unknown_version"), (flip(one, len(VERSION)), "bad_signature"),
                     (flip(one, len(one) - 1), "bad_signature"), (one[: len(VERSION) + 10], "malformed")]:
        with pytest.raises(Rejected) as info:
            unpack_one(SIGNER, bad)
        assert info.value.reason == why == reason([bad])
    with pytest.raises(Rejected, match="oversized"):
        unpack_one(SIGNER, one, max_size=len(one) - 1)
    with pytest.raises(ValueError):
        pack_one(SIGNER, Kind.REQUEST, 1, 1, S1, S2, "", "", "x" * 65536, b"")


# --- tampering ----------------------------------------------------------------------------

DIRECT = pack(SIGNER, FULL, [b"first payload", b"second payload"])
BCAST_HEADER = Header(Kind.BROADCAST, seq=9, session=S1, channel="news")
BCAST = pack(SIGNER, BCAST_HEADER, [b"payload"], topic=b"Bnews")
HEAD = DIRECT[0]
HEADER_END = len(VERSION) + len(FULL.encode())


def test_a_small_message_is_one_frame_with_its_first_payload_part_inline():
    assert len(DIRECT) == 2 and DIRECT[1] == b"second payload"
    assert HEAD.startswith(VERSION) and HEAD[HEADER_END:-MAC_SIZE] == b"first payload"
    big = pack(SIGNER, FULL, [b"x" * (INLINE_MAX + 1)])
    assert len(big) == 2 and unpack(SIGNER, big).payload == (b"x" * (INLINE_MAX + 1),)  # large: its own frame
    assert len(pack(SIGNER, FULL)) == 1


# every region of the head frame, then the second frame
@pytest.mark.parametrize("frame, at, expected", [
    (0, 0, "unknown_version"), (0, len(VERSION) - 1, "unknown_version"),
    (0, len(VERSION), "bad_signature"), (0, HEADER_END - 1, "bad_signature"),  # header
    (0, HEADER_END, "bad_signature"), (0, len(HEAD) - MAC_SIZE - 1, "bad_signature"),  # inline payload
    (0, len(HEAD) - MAC_SIZE, "bad_signature"), (0, len(HEAD) - 1, "bad_signature"),  # MAC
    (1, 0, "bad_signature"), (1, None, "bad_signature"),
])
def test_each_altered_region_is_rejected(frame, at, expected):
    frames = list(DIRECT)
    frames[frame] = flip(frames[frame], at)
    assert reason(frames) == expected


@pytest.mark.parametrize("frame, at, expected", [
    (0, None, "bad_signature"), (1, 0, "unknown_version"), (1, None, "bad_signature"),
    (1, -1, "bad_signature"),
])
def test_each_altered_broadcast_frame_is_rejected(frame, at, expected):
    frames = list(BCAST)
    frames[frame] = flip(frames[frame], at)
    assert reason(frames, with_topic=True) == expected


def test_frames_added_dropped_or_resplit_are_rejected():
    assert reason(DIRECT + [b""]) == "bad_signature"
    assert reason(DIRECT[:-1]) == "bad_signature"
    joined = HEAD[:-MAC_SIZE] + DIRECT[1]  # the same bytes, split elsewhere
    cut = HEADER_END + 5
    assert reason([joined[:cut] + HEAD[-MAC_SIZE:], joined[cut:]]) == "bad_signature"
    assert reason([joined + HEAD[-MAC_SIZE:]]) == "bad_signature"


def test_topic_frame_cannot_pass_for_a_payload_frame_or_back():
    assert reason(BCAST[1:] + [BCAST[0]]) == "bad_signature"  # broadcast replayed as a direct message
    direct = pack(SIGNER, BCAST_HEADER, [b"payload", b"Bnews"])
    assert reason([direct[-1]] + direct[:-1], with_topic=True) == "bad_signature"


def test_signed_topic_must_match_the_header():
    wrong = pack(SIGNER, BCAST_HEADER, [b"p"], topic=b"Bsports")
    assert reason(wrong, with_topic=True) == "malformed"
    not_broadcast = pack(SIGNER, Header(Kind.MESSAGE, channel="news"), [], topic=b"Bnews")
    assert reason(not_broadcast, with_topic=True) == "malformed"


def test_wrong_key_and_wrong_signature_size_are_bad_signature():
    assert reason(pack(Signer(b"other key"), FULL, [b"x"])) == "bad_signature"
    assert reason([HEAD[:-1]] + DIRECT[1:]) == "bad_signature"  # a MAC one byte short
    with pytest.raises(ValueError):
        Signer(b"")


def test_truncated_and_foreign_messages():
    assert reason([]) == "malformed"
    assert reason([VERSION]) == "malformed"
    assert reason([HEAD[: HEADER_END - 1]]) == "malformed"
    assert reason([b"ZPK0/md5"]) == "unknown_version"
    assert reason([b"ZPK1/hmac-sha256" + HEAD[len(VERSION):]] + DIRECT[1:]) == "unknown_version"
    assert reason([b"ZPK2/hmac-sha256" + HEAD[len(VERSION):]] + DIRECT[1:]) == "unknown_version"  # before BLAKE3
    assert reason([b"ZPK2/blake3\0\0\0\0\0" + HEAD[len(VERSION):]] + DIRECT[1:]) == "unknown_version"
    assert reason([], with_topic=True) == "malformed"
    assert isinstance(Rejected("malformed"), errors.ProtocolError)


def test_validly_signed_but_unparsable_headers_are_malformed():
    head = Header(Kind.MESSAGE, source="ab").encode()
    bad_kind = bytes([99]) + head[1:]
    bad_utf8 = head[:-2] + b"\xff\xfe"
    for bad in (head[:10], head + b"x", head[:-1], bad_kind, bad_utf8):
        assert reason(signed(bad, b"payload")) == "malformed"
        with pytest.raises(Rejected):
            Header.decode(bad)
    # an inline length that runs past the head
    lying = bytearray(head)
    lying[1] |= 0x80
    lying[len(head) - 2 - 4 : len(head) - 2] = (10**6).to_bytes(4, "little")
    assert reason(signed(bytes(lying))) == "malformed"


def test_max_size_counts_every_frame_before_the_mac():
    total = sum(len(f) for f in DIRECT)
    assert unpack(SIGNER, DIRECT, max_size=total).header == FULL
    assert reason(DIRECT, max_size=total - 1) == "oversized"
    assert reason(DIRECT[:1] + [b"x" * total], max_size=total) == "oversized"  # unsigned, still counted
    assert reason(BCAST, max_size=sum(len(f) for f in BCAST[1:]), with_topic=True) == "oversized"


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.path),)


def test_unpack_never_deserializes(tmp_path):
    bait = tmp_path / "pwned"
    evil = pickle.dumps(_Touch(bait), protocol=5)
    forged = pack(Signer(b"attacker"), Header(Kind.REQUEST), [evil])
    assert reason(forged) == "bad_signature"
    assert not bait.exists()
    # Even a valid message's payload comes back as the bytes it was.
    assert unpack(SIGNER, pack(SIGNER, Header(Kind.REQUEST), [evil])).payload == (evil,)
    assert not bait.exists()
    pickle.loads(evil)  # the bait is real: loading it does create the file
    assert bait.exists()


# --- replay guard -------------------------------------------------------------------------

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
    assert guard.is_retired("w", S1)
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
    assert guard.is_retired("w", S1)
    assert not guard.accept("w", S1, 1)
    assert not guard.new_session("w", S1, 1)
    guard.forget("never-seen")  # harmless


def test_retired_memory_is_bounded():
    guard = ReplayGuard(max_retired=2)
    sessions = [os.urandom(16) for _ in range(4)]
    for s in sessions:
        guard.new_session("w", s, 0)
    assert [guard.is_retired("w", s) for s in sessions] == [False, True, True, False]
    assert len(guard._retired) == 2


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


# --- denial, control bodies, errors -------------------------------------------------------

def test_is_denial():
    assert DENIAL == [VERSION + DENIED]
    assert is_denial(DENIAL) and is_denial([memoryview(VERSION + DENIED)])
    assert not is_denial(DENIAL + [b""])
    assert not is_denial([b"ZPK2/blake3" + DENIED])
    assert not is_denial(pack(SIGNER, Header(Kind.REFUSE)))


def test_body_round_trip_and_rejections():
    body = {"name": "fenêtre", "nonce": "ab" * 16, "n": [1, 2.5, None, True]}
    assert decode_body([encode_body(body)]) == body
    for payload in ([b"not json"], [b"\xff\xfe"], [b"[1, 2]"], [b'"text"'], [], [b"{}", b"{}"]):
        with pytest.raises(Rejected) as info:
            decode_body(payload)
        assert info.value.reason == "malformed"


class CustomError(Exception):
    pass


def wire(exc, origin="w1", tb=""):
    return error_from_body(decode_body([encode_body(error_body(exc, origin, tb))]))


def test_errors_cross_the_wire():
    got = wire(errors.NoHandler("ch/ü", "w2"))
    assert type(got) is errors.NoHandler and (got.channel, got.node) == ("ch/ü", "w2")
    assert str(got) == str(errors.NoHandler("ch/ü", "w2"))
    got = wire(errors.WindowNotFound("w9"))
    assert type(got) is errors.WindowNotFound and got.name == "w9" and "w9" in str(got)
    got = wire(errors.PeerLost("w3 went away"))
    assert type(got) is errors.PeerLost and str(got) == "w3 went away"


def test_remote_errors_keep_type_message_traceback_and_origin():
    got = wire(ValueError("bad value ✗"), origin="w4", tb="Traceback ...\nValueError: bad value ✗\n")
    assert type(got) is errors.RemoteError
    assert (got.remote_type, got.remote_message, got.origin) == ("ValueError", "bad value ✗", "w4")
    assert got.remote_traceback.startswith("Traceback ...") and "bad value" in str(got)
    got = wire(CustomError("x"))
    assert got.remote_type == f"{__name__}.CustomError"
    # A RemoteError forwarded by the main keeps where it was raised.
    original = errors.RemoteError("pkg.Oops", "msg", "tb text", "w5")
    got = wire(original, origin="main")
    assert (got.remote_type, got.remote_message, got.remote_traceback, got.origin) == (
        "pkg.Oops", "msg", "tb text", "w5")
