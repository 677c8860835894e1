"""Who is connected, as the main's users see it: listeners of windows coming and going, and
threads waiting for a window (``wait_for_window``).

The registry itself is the session's (``MainSession.windows``); this is what
happens beside it when a window registers, gets ready or leaves.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable, cast

from ._callbacks import Listeners
from ._common import MAX_WAIT
from ._dispatch import Dispatcher
from .errors import Timeout
from .events import WindowInfo
from .session import Peer

__all__ = ["Presence"]


class Presence:
    """The main's window listeners and waiters; the I/O thread reports, any thread waits."""

    def __init__(self, dispatch: Dispatcher) -> None:
        self._dispatch = dispatch
        self.connected = Listeners()
        self.disconnected = Listeners()
        self._waiters: dict[str, list[threading.Event]] = {}

    def registered(self, peer: Peer) -> None:
        self._wake(peer.name)
        self._tell(self.connected, peer.info)

    def ready(self, peer: Peer) -> None:
        self._wake(peer.name)

    def left(self, peer: Peer, reason: str) -> None:
        self._tell(self.disconnected, peer.info)

    def _tell(self, listeners: Listeners, info: WindowInfo) -> None:
        for cb in listeners.get(None):  # off the I/O thread, in order
            # (the cast: mypy cannot infer a lambda with a default argument as a Callable[[], None])
            self._dispatch.submit(cast(Callable[[], None], lambda cb=cb: cb(info)), lane="presence")

    def _wake(self, name: str) -> None:
        for event in self._waiters.get(name, ()):
            event.set()

    def wake_all(self) -> None:
        """The main closed: every waiter looks again (and finds it closed)."""
        for waiters in list(self._waiters.values()):
            for event in waiters:
                event.set()

    def wait(self, name: str, timeout: float | None, look: Callable[[], WindowInfo | None]) -> WindowInfo:
        """Wait until ``look()`` gives a ready window ``name`` (``look`` raises if the main closed)."""
        event = threading.Event()
        self._waiters.setdefault(name, []).append(event)
        deadline = time.monotonic() + (math.inf if timeout is None else timeout)
        try:
            while True:
                info = look()
                if info is not None and info.ready:
                    return info
                left = deadline - time.monotonic()
                if left <= 0:
                    state = "did not connect" if info is None else (
                        "connected but did not get ready (its target has neither waited in "
                        "window.wait_closed() nor called window.ready())")
                    raise Timeout(f"window {name!r} {state} within {timeout} s")
                event.wait(min(left, MAX_WAIT))
                event.clear()
        finally:
            waiters = self._waiters.get(name, [])
            if event in waiters:  # the list stays (as few as names waited for): popping it could
                waiters.remove(event)  # orphan a waiter that has just found it

