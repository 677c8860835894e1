"""What user callbacks receive: ``Event`` for messages, ``WindowInfo`` for windows."""

from __future__ import annotations

import _thread
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import threading

__all__ = ["Event", "WindowInfo", "Cancelled", "NEVER"]


class Cancelled:
    """``event.cancelled``: set once the caller gave up (it cancelled the call, or its timeout
    passed). ``is_set()``; ``wait(timeout)`` blocks until then (or the timeout) and returns
    whether it is set, as ``threading.Event`` does. Never set for a one-way message."""

    __slots__ = ("_set", "_event")
    _lock = _thread.allocate_lock()  # creating the event a waiter needs (most calls never wait)

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        if self._set:
            return True
        import threading  # here: the rules of a session (which make Events) use no threads

        with Cancelled._lock:
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        if self._set:  # set before the event existed
            return True
        return event.wait(timeout)

    def set(self) -> None:
        self._set = True
        with Cancelled._lock:
            event = self._event
        if event is not None:
            event.set()

    def __repr__(self) -> str:
        return f"<Cancelled {self._set}>"


NEVER = Cancelled()  # the ``cancelled`` of what no caller can cancel: one-way messages, broadcasts


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
    cancelled: Cancelled = NEVER
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
