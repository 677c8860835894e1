"""The wire protocol without sockets: the one framing path (pack, unpack), the MAC, rejection
reasons, names and routing ids, control bodies and errors. (Replay rules: test_session.py.)"""

from __future__ import annotations

import os
import pathlib
import pickle
import unicodedata

import pytest

from zprokit import errors, protocol
from zprokit.protocol import (
    BROADCAST_PREFIX, CONTROL_PREFIX, DENIAL, DENIED, HEARTBEAT_TOPIC, INLINE_MAX, MAC_SIZE, MAX_NAME_BYTES,
    NO_SESSION, VERSION, Kind, Message, Rejected, Signer, check_window_name, control_topic, decode_body,
    encode_body, error_body, error_from_body, is_denial, normalize_name, pack, peek_kind, routing_id,
    split_routing_id, unpack, wire_size,
)

pytestmark = pytest.mark.timeout(10)

KEY = b"test key"
SIGNER = Signer(KEY)
S1, S2 = os.urandom(16), os.urandom(16)
# Every header field at an edge: the largest msg_id, non-ASCII strings of several lengths.
FIELDS = dict(kind=Kind.REQUEST, msg_id=2**64 - 1, seq=7, session=S1, peer_session=S2,
              source="fenêtre-1", target="主", channel="κανάλι/✓")


def flip(frame, at: int | None = None) -> bytes:
    data = bytearray(frame)
    data[len(data) // 2 if at is None else at] ^= 0x01
    return bytes(data)


def reason(frames, **kw) -> str:
    with pytest.raises(Rejected) as info:
        unpack(SIGNER, frames, **kw)
    return info.value.reason


def header_of(msg: Message) -> dict:
    return {name: getattr(msg, name) for name in FIELDS}


def signed(head: bytes, *payload: bytes) -> list[bytes]:
    """A message whose MAC is valid whatever the header says: only the parser can refuse it."""
    body = VERSION + head
    return [body + SIGNER.sign(body, payload), *payload]


def bare_header(**fields) -> bytes:
    """The header bytes ``pack`` writes for a message with no payload (between VERSION and the MAC)."""
    return pack(SIGNER, **fields)[0][len(VERSION):-MAC_SIZE]


# --- round trips ---------------------------------------------------------------------------

def test_round_trip_keeps_every_header_field():
    msg = unpack(SIGNER, pack(SIGNER, **FIELDS, payload=[b"x"]))
    assert header_of(msg) == FIELDS
    ping = unpack(SIGNER, pack(SIGNER, Kind.PING))
    assert (ping.kind, ping.msg_id, ping.seq, ping.session, ping.peer_session) == (Kind.PING, 0, 0, NO_SESSION,
                                                                                    NO_SESSION)
    assert (ping.source, ping.target, ping.channel, ping.payload) == ("", "", "", ())
    assert NO_SESSION == bytes(16)


def test_pack_refuses_what_it_cannot_represent():
    with pytest.raises(ValueError):
        pack(SIGNER, Kind.MESSAGE, channel="x" * 65536)
    with pytest.raises(ValueError):
        pack(SIGNER, Kind.MESSAGE, source="é" * 32768)  # 65,536 bytes of UTF-8
    with pytest.raises(ValueError):  # "16s" would silently pad or truncate
        pack(SIGNER, Kind.MESSAGE, session=b"short")
    with pytest.raises(ValueError):
        pack(SIGNER, Kind.MESSAGE, peer_session=bytes(17))


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("payload", [(), (b"",), (b"pickle", b"", bytes(range(256)) * 64)])
def test_pack_unpack_round_trip(kind, payload):
    fields = dict(kind=kind, msg_id=42, seq=3, session=S1, source="wïn", target="main", channel="ch/ü")
    msg = unpack(SIGNER, pack(SIGNER, **fields, payload=payload))
    assert {name: getattr(msg, name) for name in fields} == fields
    assert [bytes(f) for f in msg.payload] == list(payload)


def test_broadcast_round_trip_with_unicode_topic():
    channel = "météo/☂"
    topic = BROADCAST_PREFIX + channel.encode()
    frames = pack(SIGNER, Kind.BROADCAST, seq=1, session=S1, source="main", channel=channel,
                  payload=[memoryview(b"a"), bytearray(b"b")], topic=topic)
    assert bytes(frames[0]) == topic
    msg = unpack(SIGNER, frames[1:], topic=frames[0])
    assert (msg.kind, msg.seq, msg.channel) == (Kind.BROADCAST, 1, channel)
    assert [bytes(f) for f in msg.payload] == [b"a", b"b"]


def test_the_main_heartbeat_rides_the_pub_as_a_ping_under_its_own_topic():
    frames = pack(SIGNER, Kind.PING, seq=4, session=S1, topic=HEARTBEAT_TOPIC)
    assert unpack(SIGNER, frames[1:], topic=frames[0]).kind == Kind.PING
    named = pack(SIGNER, Kind.PING, seq=4, session=S1, channel="x", topic=HEARTBEAT_TOPIC)
    assert reason(named[1:], topic=named[0]) == "malformed"  # the heartbeat has no channel


# --- framing: what goes inline, what gets a frame of its own ------------------------------------

def test_a_one_part_payload_up_to_64_kib_rides_in_the_head_frame():
    for size in (0, 1, INLINE_MAX):
        frames = pack(SIGNER, **FIELDS, payload=[b"p" * size])
        assert len(frames) == 1
        assert frames[0].startswith(VERSION) and frames[0][-MAC_SIZE - size:-MAC_SIZE] == b"p" * size
        msg = unpack(SIGNER, frames)
        assert header_of(msg) == FIELDS and [bytes(p) for p in msg.payload] == [b"p" * size]


def test_a_larger_first_part_gets_its_own_frame_uncopied():
    big = bytearray(b"x" * (INLINE_MAX + 1))
    frames = pack(SIGNER, **FIELDS, payload=[big])
    assert len(frames) == 2 and frames[1] is big
    assert len(frames[0]) == len(bare_header(**FIELDS)) + len(VERSION) + MAC_SIZE  # nothing inline
    assert [bytes(p) for p in unpack(SIGNER, frames).payload] == [bytes(big)]


def test_a_multi_part_payload_inlines_the_first_small_part_only():
    frames = pack(SIGNER, **FIELDS, payload=[b"first", b"second", b"x" * (INLINE_MAX + 1)])
    assert len(frames) == 3 and frames[1:] == [b"second", b"x" * (INLINE_MAX + 1)]
    assert frames[0][-MAC_SIZE - 5:-MAC_SIZE] == b"first"
    assert [bytes(p) for p in unpack(SIGNER, frames).payload] == [b"first", b"second", b"x" * (INLINE_MAX + 1)]


@pytest.mark.parametrize("payload", [(), (b"x",), (b"x" * (INLINE_MAX + 1),), (b"a", b"bc", b"")])
def test_wire_size_is_what_the_receivers_limit_counts(payload):
    names = dict(source="fenêtre", target="主", channel="ch")
    size = wire_size(payload, **names)
    frames = pack(SIGNER, Kind.MESSAGE, **names, payload=payload)
    assert size == sum(len(f) for f in frames)
    assert unpack(SIGNER, frames, max_size=size).kind == Kind.MESSAGE
    assert reason(frames, max_size=size - 1) == "oversized"


def test_a_frame_hashed_on_every_core_signs_as_on_one(monkeypatch):
    big = bytes(range(256)) * (protocol._THREADED_MIN // 256)  # large enough for Rayon's pool
    fields = dict(kind=Kind.BROADCAST, seq=1, session=S1, channel="news", payload=[b"p", big], topic=b"Bnews")
    pooled = pack(SIGNER, **fields)
    monkeypatch.setattr(protocol, "_rayon_usable", False)  # as in a child forked after the pool started
    assert pack(SIGNER, **fields) == pooled
    monkeypatch.undo()
    msg = unpack(SIGNER, pooled[1:], topic=pooled[0])
    assert [bytes(p) for p in msg.payload] == [b"p", big]
    assert reason([pooled[1], big[:-1] + b"x"], topic=pooled[0]) == "bad_signature"


def test_no_payload_is_not_an_empty_payload():
    assert unpack(SIGNER, pack(SIGNER, Kind.PING, seq=1, session=S1)).payload == ()
    assert [bytes(p) for p in unpack(SIGNER, pack(SIGNER, Kind.PING, payload=[b""])).payload] == [b""]


# --- tampering ----------------------------------------------------------------------------

ONE = pack(SIGNER, **FIELDS, payload=[b"payload"])
DIRECT = pack(SIGNER, **FIELDS, payload=[b"first payload", b"second payload"])
BCAST = pack(SIGNER, Kind.BROADCAST, seq=9, session=S1, channel="news", payload=[b"payload"], topic=b"Bnews")
HEAD = DIRECT[0]
HEADER_END = len(VERSION) + len(bare_header(**FIELDS))


def test_the_fixtures_have_the_shapes_the_tampering_tests_assume():
    assert len(ONE) == 1 and len(DIRECT) == 2 and DIRECT[1] == b"second payload" and len(BCAST) == 2
    assert HEAD[HEADER_END:-MAC_SIZE] == b"first payload"


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


@pytest.mark.parametrize("at, expected", [
    (0, "unknown_version"), (len(VERSION), "bad_signature"), (HEADER_END, "bad_signature"),
    (len(ONE[0]) - MAC_SIZE - 1, "bad_signature"), (len(ONE[0]) - 1, "bad_signature"),
])
def test_each_altered_region_of_a_one_frame_message_is_rejected(at, expected):
    assert reason([flip(ONE[0], at)]) == expected


@pytest.mark.parametrize("frame, at, expected", [
    (0, None, "bad_signature"), (1, 0, "unknown_version"), (1, None, "bad_signature"),
    (1, -1, "bad_signature"),
])
def test_each_altered_broadcast_frame_is_rejected(frame, at, expected):
    frames = list(BCAST)
    frames[frame] = flip(frames[frame], at)
    assert reason(frames[1:], topic=frames[0]) == expected


def test_a_broadcast_is_only_accepted_with_the_topic_it_was_signed_with():
    assert unpack(SIGNER, BCAST[1:], topic=BCAST[0]).channel == "news"
    for wrong in (b"Bnewz", b"news", b"", b"Bnews\0"):
        assert reason(BCAST[1:], topic=wrong) == "bad_signature"
    assert reason(BCAST[1:]) == "bad_signature"  # its topic left out


def test_frames_added_dropped_or_resplit_are_rejected():
    assert reason(DIRECT + [b""]) == "bad_signature"
    assert reason(DIRECT[:-1]) == "bad_signature"
    assert reason(ONE + [b""]) == "bad_signature"
    joined = HEAD[:-MAC_SIZE] + DIRECT[1]  # the same bytes, split elsewhere
    cut = HEADER_END + 5
    assert reason([joined[:cut] + HEAD[-MAC_SIZE:], joined[cut:]]) == "bad_signature"
    assert reason([joined + HEAD[-MAC_SIZE:]]) == "bad_signature"


def test_topic_frame_cannot_pass_for_a_payload_frame_or_back():
    assert reason(BCAST[1:] + [BCAST[0]]) == "bad_signature"  # broadcast replayed as a direct message
    direct = pack(SIGNER, Kind.BROADCAST, seq=9, session=S1, channel="news", payload=[b"payload", b"Bnews"])
    assert reason(direct[:-1], topic=direct[-1]) == "bad_signature"


def test_signed_topic_must_match_the_header():
    wrong = pack(SIGNER, Kind.BROADCAST, seq=9, session=S1, channel="news", payload=[b"p"], topic=b"Bsports")
    assert reason(wrong[1:], topic=wrong[0]) == "malformed"
    not_broadcast = pack(SIGNER, Kind.MESSAGE, channel="news", topic=b"Bnews")
    assert reason(not_broadcast[1:], topic=not_broadcast[0]) == "malformed"


def test_wrong_key_and_wrong_signature_size_are_bad_signature():
    assert reason(pack(Signer(b"other key"), **FIELDS, payload=[b"x"])) == "bad_signature"
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
    assert reason([], topic=b"Bnews") == "malformed"
    assert isinstance(Rejected("malformed"), errors.ProtocolError)


def test_validly_signed_but_unparsable_headers_are_malformed():
    head = bare_header(kind=Kind.MESSAGE, source="ab")
    bad_kind = bytes([99]) + head[1:]
    bad_utf8 = head[:-2] + b"\xff\xfe"
    for bad in (head[:10], head + b"x", head[:-1], bad_kind, bad_utf8):
        assert reason(signed(bad, b"payload")) == "malformed"
    assert unpack(SIGNER, signed(head)).source == "ab"  # the control: unaltered, it parses
    # the fixed part's inline length: before its timeout_ms and count (4 bytes each), then "ab"
    inline_at = slice(len(head) - 2 - 12, len(head) - 2 - 8)
    # an inline length that runs past the head
    lying = bytearray(head)
    lying[1] |= 0x80
    lying[inline_at] = (10**6).to_bytes(4, "little")
    assert reason(signed(bytes(lying))) == "malformed"
    # an inline length without the inline flag
    unflagged = bytearray(head + b"xy")
    unflagged[inline_at] = (2).to_bytes(4, "little")
    assert reason(signed(bytes(unflagged))) == "malformed"


def test_max_size_counts_every_frame_and_the_topic():
    total = sum(len(f) for f in DIRECT)
    assert header_of(unpack(SIGNER, DIRECT, max_size=total)) == FIELDS
    assert reason(DIRECT, max_size=total - 1) == "oversized"
    assert reason(DIRECT[:1] + [b"x" * total], max_size=total) == "oversized"  # unsigned, still counted
    assert reason(ONE, max_size=len(ONE[0]) - 1) == "oversized"
    assert unpack(SIGNER, BCAST[1:], topic=BCAST[0], max_size=sum(len(f) for f in BCAST)).channel == "news"
    assert reason(BCAST[1:], topic=BCAST[0], max_size=sum(len(f) for f in BCAST[1:])) == "oversized"


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.path),)


def test_unpack_never_deserializes(tmp_path):
    bait = tmp_path / "pwned"
    evil = pickle.dumps(_Touch(bait), protocol=5)
    forged = pack(Signer(b"attacker"), Kind.REQUEST, payload=[evil])
    assert reason(forged) == "bad_signature"
    assert not bait.exists()
    # Even a valid message's payload comes back as the bytes it was.
    assert [bytes(p) for p in unpack(SIGNER, pack(SIGNER, Kind.REQUEST, payload=[evil])).payload] == [evil]
    assert not bait.exists()
    pickle.loads(evil)  # the bait is real: loading it does create the file
    assert bait.exists()


def test_peek_kind_names_the_claimed_kind_or_none():
    assert peek_kind(ONE) == Kind.REQUEST
    assert peek_kind(pack(Signer(b"other key"), Kind.HELLO)) == Kind.HELLO  # unverified: a claim only
    assert peek_kind([]) is None and peek_kind([b"ZPK0/md5"]) is None and peek_kind([VERSION]) is None
    assert peek_kind([VERSION + bytes([99])]) is None


# --- names and routing ids ----------------------------------------------------------------

def test_a_routing_id_splits_back_into_name_and_nonce():
    ident = routing_id("fenêtre", "ab" * 16)
    assert ident == "fenêtre\0".encode() + b"ab" * 16
    assert split_routing_id(ident) == ("fenêtre", "ab" * 16)
    assert split_routing_id(b"w") == ("w", "")  # no nonce: an empty one, never a name with a NUL


def test_a_routing_id_that_is_not_utf8_is_malformed():
    with pytest.raises(Rejected) as info:
        split_routing_id(b"\xff" + bytes(15))  # a probe's routing id: never a name
    assert info.value.reason == "malformed"


def test_a_stranger_with_zeromqs_own_routing_id_has_an_empty_name_not_a_malformed_one():
    # ZeroMQ gives an anonymous peer 0x00 and a 32-bit counter: its "nonce" half may be any bytes,
    # and the message must be judged by its name (none: unregistered), not fail on the rest.
    name, nonce = split_routing_id(b"\x00\x80\xff\x00\x01")
    assert name == "" and nonce != "ab" * 16


def test_the_control_topic_is_the_prefix_and_the_routing_id():
    assert control_topic("w", "n" * 32) == CONTROL_PREFIX + routing_id("w", "n" * 32)
    assert control_topic("w", "n" * 32) != control_topic("w", "m" * 32)


def test_the_longest_name_leaves_a_routing_id_zeromq_accepts():
    longest = "x" * MAX_NAME_BYTES
    assert check_window_name(longest) is None
    assert len(routing_id(longest, "ab" * 16)) == 255
    assert "at most" in check_window_name(longest + "x")
    assert "at most" in check_window_name("é" * (MAX_NAME_BYTES // 2 + 1))  # counted in bytes of UTF-8


@pytest.mark.parametrize("name, why", [
    ("", "non-empty"), (None, "non-empty"), (b"bytes", "non-empty"), (7, "non-empty"),
    ("a\0b", "NUL"), ("\ud800", "surrogates"),
])
def test_names_a_window_cannot_have(name, why):
    assert why in check_window_name(name)


def test_names_are_compared_in_nfc():
    nfd, nfc = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    assert nfd != nfc and normalize_name(nfd) == nfc == normalize_name(nfc)
    assert normalize_name("plain") == "plain" and normalize_name(7) == 7


# --- denial, control bodies, errors -------------------------------------------------------

def test_is_denial():
    assert DENIAL == [VERSION + DENIED]
    assert is_denial(DENIAL) and is_denial([memoryview(VERSION + DENIED)])
    assert not is_denial(DENIAL + [b""])
    assert not is_denial([b"ZPK2/blake3" + DENIED])
    assert not is_denial(pack(SIGNER, Kind.REFUSE))


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
