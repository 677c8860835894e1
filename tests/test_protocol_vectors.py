"""docs/protocol.md's test vectors are what protocol.py makes and accepts, byte for byte.

No sockets: the vectors are parsed from the page, rebuilt from the inputs the
page states, compared, then verified and split by ``unpack``.
"""

from __future__ import annotations

import pathlib
import re

import pytest

from zprokit import protocol
from zprokit.protocol import Header, Kind, Rejected, Signer, pack, unpack

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
KEY = b"zprokit protocol test vector key"
A, B = bytes(range(16)), bytes(range(16, 32))

# The inputs the page states for each vector: (header, payload, topic).
INPUTS = {
    "request": (Header(Kind.REQUEST, 7, 1, A, B, "w", "", "sum"), [b"[1,2,3]"], None),
    "reply": (Header(Kind.REPLY, 7, 1, B, A, "", "w", ""), [b"6"], None),
    "ping": (Header(Kind.PING, 0, 2, A, B, "w", "", ""), [], None),
    "broadcast": (Header(Kind.BROADCAST, 0, 3, B, protocol.NO_SESSION, "", "", "news"), [b'"hi"'], b"Bnews"),
    "two-frames": (Header(Kind.MESSAGE, 9, 4, A, B, "w", "x", "c"), [b"\x00" * 4, b"\x01\x02"], None),
}


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
    made = [bytes(f) for f in pack(signer, Header(**{f: getattr(header, f) for f in header.__slots__}), payload,
                                   topic=topic)]
    assert made == expected
    msg = unpack(signer, expected, with_topic=topic is not None)
    h = msg.header
    assert (h.kind, h.msg_id, h.seq, h.session, h.peer_session, h.source, h.target, h.channel) == (
        header.kind, header.msg_id, header.seq, header.session, header.peer_session, header.source,
        header.target, header.channel)
    assert [bytes(p) for p in msg.payload] == payload
    with pytest.raises(Rejected, match="bad_signature"):
        unpack(Signer(b"another key entirely, 32 bytes."), expected, with_topic=topic is not None)
