"""docs/protocol.md's test vectors are what protocol.py makes and accepts, byte for byte.

No sockets: the vectors are parsed from the page, rebuilt from the inputs the
page states, compared, then verified and split by ``unpack``.
"""

from __future__ import annotations

import pathlib
import re

import pytest

from zprokit import protocol
from zprokit.protocol import Kind, Rejected, Signer, pack, unpack

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
KEY = b"zprokit protocol test vector key"
A, B = bytes(range(16)), bytes(range(16, 32))
HEADER = ("kind", "msg_id", "seq", "session", "peer_session", "source", "target", "channel")

# The inputs the page states for each vector: (header fields, payload, topic).
INPUTS = {
    "request": (dict(zip(HEADER, (Kind.REQUEST, 7, 1, A, B, "w", "", "sum"))), [b"[1,2,3]"], None),
    "reply": (dict(zip(HEADER, (Kind.REPLY, 7, 1, B, A, "", "w", ""))), [b"6"], None),
    "ping": (dict(zip(HEADER, (Kind.PING, 0, 2, A, B, "w", "", ""))), [], None),
    "broadcast": (dict(zip(HEADER, (Kind.BROADCAST, 0, 3, B, protocol.NO_SESSION, "", "", "news"))), [b'"hi"'],
                  b"Bnews"),
    "two-frames": (dict(zip(HEADER, (Kind.MESSAGE, 9, 4, A, B, "w", "x", "c"))), [b"\x00" * 4, b"\x01\x02"], None),
    "group-request": (dict(zip(HEADER, (Kind.REQUEST, 11, 5, A, B, "w", "gpu", "job"))), [b"1"], None),
    "stream": (dict(zip(HEADER, (Kind.STREAM, 12, 6, A, B, "w", "", "frames"))), [b"3"], None),
    "item": (dict(zip(HEADER, (Kind.ITEM, 12, 2, B, A, "", "w", ""))), [b'"frame 0"'], None),
    "more": (dict(zip(HEADER, (Kind.MORE, 12, 7, A, B, "w", "", ""))), [], None),
    "end-error": (dict(zip(HEADER, (Kind.END, 12, 3, B, A, "", "w", ""))),
                  [b'{"code":"remote","origin":"main","message":"boom","type":"ValueError","traceback":""}'], None),
    "cancel": (dict(zip(HEADER, (Kind.CANCEL, 12, 8, A, B, "w", "", ""))), [], None),
    "batch": (dict(zip(HEADER, (Kind.BATCH, 0, 4, B, A, "", "w", ""))), [bytes.fromhex(
        "0c0007000000000000000000000000000100000000000000000000003"  # REPLY 7: "6"
        "60c00080000000000000000000000000001000000000000000000000037")], None),  # REPLY 8: "7"
}
# The header fields past the strings, where a vector states them (the others are 0).
EXTRA = {
    "group-request": {"timeout_ms": 5000, "count": 2, "flags": protocol.FLAG_GROUP},
    "stream": {"timeout_ms": 30000, "count": 16},
    "more": {"count": 8},
    "batch": {"count": 2},
}
ZEROS = {"timeout_ms": 0, "count": 0, "flags": 0}


def vectors() -> dict[str, list[bytes]]:
    text = DOC.read_text()
    found = re.findall(r"```vector ([\w-]+)\n(.*?)```", text, re.S)
    return {name: [bytes.fromhex(line) for line in body.split()] for name, body in found}


def test_the_page_names_its_version_and_has_every_vector():
    assert protocol.VERSION.decode() in DOC.read_text()
    assert set(vectors()) == set(INPUTS)


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_a_vector_is_what_pack_makes_and_unpack_accepts(name):
    header, payload, topic = INPUTS[name]
    expected = vectors()[name]
    signer = Signer(KEY)
    extra = EXTRA.get(name, {})
    made = [bytes(f) for f in pack(signer, **header, payload=payload, topic=topic, **extra)]
    assert made == expected
    # A broadcast's first frame is its topic: the receiver takes it off and passes it, as it is signed.
    frames, wire_topic = (expected[1:], expected[0]) if topic is not None else (expected, None)
    assert wire_topic == topic
    msg = unpack(signer, frames, topic=wire_topic)
    assert {f: getattr(msg, f) for f in HEADER} == header
    assert {f: getattr(msg, f) for f in ZEROS} == {**ZEROS, **extra}
    assert [bytes(p) for p in msg.payload] == payload
    with pytest.raises(Rejected, match="bad_signature"):
        unpack(Signer(b"another key entirely, 32 bytes."), frames, topic=wire_topic)


def test_the_batch_vector_carries_two_replies_as_batch_item_makes_them():
    header, payload, _ = INPUTS["batch"]
    assert payload == [protocol.batch_item(Kind.REPLY, 7, b"6") + protocol.batch_item(Kind.REPLY, 8, b"7")]
    msg = unpack(Signer(KEY), vectors()["batch"])
    inner = protocol.unbatch(msg)
    assert [(m.kind, m.msg_id, bytes(m.payload[0]), m.seq, m.session, m.peer_session) for m in inner] == [
        (Kind.REPLY, 7, b"6", 4, B, A), (Kind.REPLY, 8, b"7", 4, B, A)]


@pytest.mark.parametrize("records, count, why", [
    (protocol.batch_item(Kind.REPLY, 7, b"6")[:-1], 1, "runs past"),  # cut short
    (protocol.batch_item(Kind.REPLY, 7, b"6"), 2, "carries 1"),  # count does not match
    (protocol.batch_item(Kind.HELLO, 7, b"{}"), 1, "HELLO in a batch"),  # not a batchable kind
    (protocol.batch_item(Kind.BATCH, 0, b""), 1, "BATCH in a batch"),  # no nesting
    (protocol.batch_item(99, 7, b"6"), 1, "bad batch record"),  # no such kind
    (b"\x0c\x00", 1, "bad batch record"),  # shorter than a record's header
])
def test_a_batch_that_does_not_add_up_is_dropped_whole(records, count, why):
    signer = Signer(KEY)
    frames = pack(signer, Kind.BATCH, 0, 4, B, A, "", "w", "", [records], count=count)
    with pytest.raises(Rejected, match=why):
        protocol.unbatch(unpack(signer, frames))
