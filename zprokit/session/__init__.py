"""The rules of a zprokit session, with no I/O: verified messages and the time in, decisions out.

``protocol`` turns frames into messages; this module decides what a message
means for the session it belongs to, as h11 keeps its state machine apart
from its sockets:

- ``ReplayGuard``: the live session of each peer and the highest sequence
  number seen from it; retired sessions are never accepted again;
- ``MainSession``: the main's side: the handshake and name contests, the
  registry of windows, who may send what, liveness, and the calls in flight
  (requests waiting for a handler, window -> window routes);
- ``WindowSession``: a window's side: the handshake's answer, what the main
  may send, the broadcast numbering, liveness and the reconnect backoff.

Nothing here touches a socket, a thread or a clock: the caller passes
``now`` (``time.monotonic()``) and carries out what comes back: a message to
send, a window to drop, a timer to set. So every rule is tested without
ZeroMQ (``tests/test_session.py``), and both nodes share one copy of each
check. Callers serialize their use of a session (the node's I/O thread).
"""

from ._guard import BROADCAST_STREAM, MAIN_NAME, Cancellable, ReplayGuard
from ._main import (Contest, GroupJob, HelloDecision, MainSession, Peer, Refuse, Route, Settled, Unwelcome, Welcome,
                    least_loaded)
from ._window import HandshakeFailed, Joining, MainRestarted, WindowSession

__all__ = [
    "ReplayGuard",
    "Cancellable",
    "Peer",
    "Route",
    "GroupJob",
    "least_loaded",
    "Welcome",
    "Refuse",
    "Contest",
    "HelloDecision",
    "Settled",
    "Unwelcome",
    "MainSession",
    "Joining",
    "HandshakeFailed",
    "MainRestarted",
    "WindowSession",
    "MAIN_NAME",
    "BROADCAST_STREAM",
]
