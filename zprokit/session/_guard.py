"""The replay guard, and the marker of a call waiting for a handler: shared by both sides."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Protocol

__all__ = ["ReplayGuard", "Cancellable", "MAIN_NAME", "BROADCAST_STREAM"]

MAIN_NAME = "main"
BROADCAST_STREAM = 1  # the PUB's numbers: a stream of their own beside the ROUTER's


class ReplayGuard:
    """Per peer and stream: the live session and the highest sequence number seen.

    ``accept`` must only be called for messages whose signature verified. A
    peer's session changes only when it re-registers (``new_session``); a
    session once replaced is remembered as retired and never accepted again,
    so a recorded message of an earlier incarnation cannot be replayed.
    Memory is bounded: at most ``max_retired`` retired sessions (and as many
    handshake sessions, see ``first_hello``) are kept.
    """

    def __init__(self, max_retired: int = 4096) -> None:
        self._live: dict[tuple[str, int], tuple[bytes, int]] = {}
        self._retired: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._hellos: OrderedDict[bytes, None] = OrderedDict()
        self._max_retired = max_retired

    def first_hello(self, session: bytes) -> bool:
        """True the first time a handshake from ``session`` is seen; False for a replayed HELLO.

        Every handshake starts a new session, so a HELLO is never legitimately
        sent twice. The last ``max_retired`` sessions are remembered.
        """
        if session in self._hellos:
            return False
        self._hellos[session] = None
        if len(self._hellos) > self._max_retired:
            self._hellos.popitem(last=False)
        return True

    def new_session(self, peer: str, session: bytes, seq: int, stream: int = 0) -> bool:
        """Start tracking a new incarnation of ``peer``; False if it was retired."""
        if (peer, session) in self._retired:
            return False
        for key in [k for k in self._live if k[0] == peer]:
            old_session, _ = self._live[key]
            if old_session != session:
                del self._live[key]
                self._retire(peer, old_session)
        last = self._live.get((peer, stream))
        self._live[(peer, stream)] = (session, seq if last is None else max(seq, last[1]))
        return True

    def accept(self, peer: str, session: bytes, seq: int, stream: int = 0) -> bool:
        """True (and recorded) if ``seq`` is new for the peer's live session."""
        live = self._live.get((peer, stream))
        if live is None:
            other = next((s for (p, _), (s, _) in self._live.items() if p == peer), None)
            if other != session:
                return False
            self._live[(peer, stream)] = (session, seq)
            return True
        live_session, last = live
        if session != live_session or seq <= last:
            return False
        self._live[(peer, stream)] = (session, seq)
        return True

    def forget(self, peer: str) -> None:
        """The peer left: retire its session so its messages cannot come back."""
        for key in [k for k in self._live if k[0] == peer]:
            session, _ = self._live.pop(key)
            self._retire(peer, session)

    def _retire(self, peer: str, session: bytes) -> None:
        self._retired[(peer, session)] = None
        while len(self._retired) > self._max_retired:
            self._retired.popitem(last=False)


class Cancellable(Protocol):
    """A call being served, as the session keeps it: what a CANCEL (or the caller leaving) does."""

    started: bool
    more: Callable[[int], None] | None  # a stream's producer takes its consumer's credit here

    def cancel(self) -> bool:
        """Stop it; True if it had not started (it never will: forget it now)."""
        ...
