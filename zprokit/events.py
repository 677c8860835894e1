"""What user callbacks receive: ``Event`` for messages, ``WindowInfo`` for windows."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Event", "WindowInfo"]


@dataclass(frozen=True, slots=True)
class Event:
    """Where a message came from.

    ``sender`` is the window name that sent it, or ``"main"`` when the main
    process sent it; since a window may be named "main" too (as electron-prokit's
    main window is), ``from_main`` tells the two apart: True only for what the
    main process itself sent. ``channel`` is the channel it was sent on;
    ``topic`` is set for broadcasts only; ``kind`` is ``"request"`` (the
    callback's return value is the reply), ``"message"`` (one-way) or
    ``"broadcast"``; ``receiver`` names the node that got it.
    """

    sender: str
    channel: str
    kind: str
    topic: str | None = None
    receiver: str = ""
    from_main: bool = False


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
    # False while a window made by create_window is still setting up (its target has not yet
    # waited in wait_closed(), called ready() or returned); wait_for_window waits for True.
    ready: bool = True
