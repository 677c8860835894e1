"""What user callbacks receive: ``Event`` for messages, ``WindowInfo`` for windows."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._calls import Cancelled

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

    For a request: ``cancelled`` says whether its caller gave up (it
    cancelled the call, or its timeout passed): ``cancelled.is_set()``,
    ``cancelled.wait(timeout)``; a long handler looks now and then and stops
    early. ``deadline`` is when the caller stops waiting (a ``time.time()``
    value; ``None``: no limit), and ``time_remaining()`` the seconds until then.
    """

    sender: str
    channel: str
    kind: str
    topic: str | None = None
    receiver: str = ""
    from_main: bool = False
    cancelled: Cancelled | None = None
    deadline: float | None = None

    def time_remaining(self) -> float | None:
        """Seconds until the caller's deadline (0 once it has passed); ``None``: no deadline."""
        return None if self.deadline is None else max(0.0, self.deadline - time.time())


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
    groups: tuple[str, ...] = ()  # the worker groups it joined (Window(groups=...)), for call_any and call_all
