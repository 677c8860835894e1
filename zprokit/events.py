"""What user callbacks receive: ``Event`` for messages, ``WindowInfo`` for windows."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Event", "WindowInfo"]


@dataclass(frozen=True, slots=True)
class Event:
    """Where a message came from.

    ``sender`` is the window name that sent it, or ``"main"``; ``channel`` the
    channel it was sent on; ``topic`` is set for broadcasts only; ``kind`` is
    ``"request"`` (the callback's return value is the reply), ``"message"``
    (one-way) or ``"broadcast"``.
    """

    sender: str
    channel: str
    kind: str
    topic: str | None = None
    receiver: str = ""


@dataclass(frozen=True, slots=True)
class WindowInfo:
    """A connected window, as the main's registry sees it."""

    name: str
    host: str
    pid: int
    connected_since: float  # time.time() when it registered
    address: str = ""  # the peer address of its connection, when ZeroMQ tells it
    serializer: str = "pickle"
    session: str = field(default="", repr=False)
