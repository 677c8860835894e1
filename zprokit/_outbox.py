"""Calls made while others are still unanswered wait a moment, and leave together as one BATCH.

A pipelined caller makes its calls one at a time, and each alone costs a
ZeroMQ send (which may wake libzmq's I/O thread) and a MAC. So a call made
while the caller has others in flight is *corked*: it waits in the outbox
until the node sends anything else (then it leaves first, so numbers keep
their order), until a caller waits for an answer, until the outbox is full,
or at the latest ``CORK_FOR`` seconds later, when the I/O loop sends it.
A call made when none is in flight leaves at once: a lone round trip waits
for nothing.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import protocol

__all__ = ["CORK_FOR", "Corked", "Outbox"]

CORK_FOR = 0.0005  # seconds a corked call waits at most when nobody sends or waits
CORK_MAX = 16  # calls in one BATCH: enough to spare sends, few enough to keep the callee busy meanwhile
CORK_PART_MAX = 16 * 1024  # a call with a larger payload (or more than one part) leaves alone


class Corked(NamedTuple):
    """A call waiting in the outbox: what its message will carry."""

    kind: int
    msg_id: int
    target: str
    channel: str
    data: Any
    timeout_ms: int
    credit: int  # the message's count field (NamedTuple has a count() of its own)
    flags: int


class Outbox:
    """The corked calls of ``source``, in order. Not thread-safe: its owner's send lock guards it."""

    __slots__ = ("items", "_size", "_record")

    def __init__(self, source: str) -> None:
        self.items: list[Corked] = []
        self._size = 0
        self._record = protocol.BATCH_RECORD + len(source.encode())  # each record carries the sender's name

    def add(self, item: Corked, limit: int | None) -> bool:
        """Cork ``item`` if it fits (one small part, and room in a BATCH of at most ``limit``
        bytes, what the receiver reads); False if it must leave alone, now."""
        data = item.data
        size = len(data) if type(data) is bytes else memoryview(data).nbytes
        size += self._record + len(item.target) * 4 + len(item.channel) * 4  # UTF-8: at most 4 bytes a character
        room = protocol.batch_room(limit)
        if size > CORK_PART_MAX or self._size + size > room:
            return False
        self.items.append(item)
        self._size += size
        return True

    @property
    def full(self) -> bool:
        return len(self.items) >= CORK_MAX

    def take(self) -> list[Corked]:
        items, self.items, self._size = self.items, [], 0
        return items


def records(items: list[Corked], source: str) -> bytes:
    """The BATCH payload of ``items``, from ``source``."""
    return b"".join([protocol.batch_item(i.kind, i.msg_id, i.data, source, i.target, i.channel,
                                         timeout_ms=i.timeout_ms, count=i.credit, flags=i.flags) for i in items])

