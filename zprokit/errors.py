"""The exceptions zprokit raises.

Everything zprokit raises on purpose derives from one base class::

    ZprokitError
     ├── WindowNotFound        no connected window has that name
     ├── NoHandler             the receiver has nothing registered for the channel
     ├── RemoteError           the remote handler raised; carries type, message,
     │                         traceback and the window it ran in
     ├── Timeout               no answer in time (also a builtin TimeoutError)
     ├── PeerLost              the other side went away with the request pending
     ├── NameInUse             a live window already holds the name
     ├── AuthenticationError   the peer could not verify us, or we it (wrong key)
     ├── ProtocolError         bytes that are not a zprokit message
     ├── QueueFull             the peer's queue is at its high-water mark: back off
     ├── MessageTooLarge       over the receiver's size limit: refused before sending
     │                         (also a ValueError)
     └── Closed                this node is closed: by its owner, by a failure of
                               its I/O thread (``close_reason``), or it belongs to
                               the parent of a forked process

"The peer broke it" (`PeerLost`) is kept apart from "you closed it"
(`Closed`), as trio does: the first is something to retry, the second a bug
in the caller.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ZprokitError",
    "WindowNotFound",
    "NoHandler",
    "RemoteError",
    "Timeout",
    "PeerLost",
    "NameInUse",
    "AuthenticationError",
    "ProtocolError",
    "QueueFull",
    "MessageTooLarge",
    "Closed",
]


class ZprokitError(Exception):
    """Base class of every error zprokit raises on purpose."""


class WindowNotFound(ZprokitError, LookupError):
    """No connected window has the name.

    Attributes: ``name``, the window asked for.
    """

    def __init__(self, name: str, message: str | None = None) -> None:
        self.name = name
        super().__init__(message or f"no connected window named {name!r}")


class NoHandler(ZprokitError):
    """The receiver has no handler registered for the channel.

    Attributes: ``channel``; ``node``, the name of the receiver.
    """

    def __init__(self, channel: str, node: str = "main", message: str | None = None) -> None:
        self.channel = channel
        self.node = node
        super().__init__(message or f"{node} has no handler for channel {channel!r}")


class RemoteError(ZprokitError):
    """A handler raised on the other side.

    Attributes: ``remote_type`` (qualified name of the exception's class),
    ``remote_message``, ``remote_traceback`` (formatted, as text) and
    ``origin`` (the name of the node that ran the handler).
    """

    def __init__(
        self,
        remote_type: str,
        remote_message: str,
        remote_traceback: str = "",
        origin: str = "",
    ) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.origin = origin
        super().__init__(f"{remote_type}: {remote_message} (raised in {origin or 'peer'})")

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text

    def __reduce__(self) -> tuple[Any, ...]:  # keep all attributes across pickling
        return (
            type(self),
            (self.remote_type, self.remote_message, self.remote_traceback, self.origin),
        )


class Timeout(ZprokitError, TimeoutError):
    """No answer arrived in time. Also a builtin ``TimeoutError``."""


class PeerLost(ZprokitError, ConnectionError):
    """The peer went away (closed, died, or restarted) with the request pending."""


class NameInUse(ZprokitError):
    """A live window already holds the name; ``name`` says which."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"a live window already holds the name {name!r}")


class AuthenticationError(ZprokitError):
    """The peer refused our signature, or we could not verify the peer's (wrong key)."""


class ProtocolError(ZprokitError):
    """Bytes that are not a valid zprokit message, or a peer speaking another version."""


class QueueFull(ZprokitError):
    """The queue towards the peer is full (its ZeroMQ high-water mark): nothing was sent.

    Backpressure, not loss: the peer is alive but not keeping up. Retry later,
    or slow down. ``peer`` names the window (or ``"main"``).
    """

    def __init__(self, peer: str, message: str | None = None) -> None:
        self.peer = peer
        super().__init__(message or f"the queue to {peer!r} is full: it is not keeping up; nothing was sent")


class MessageTooLarge(ZprokitError, ValueError):
    """A message is larger than its receiver reads (its ``max_payload``): refused before it is sent.

    Attributes: ``size`` (bytes on the wire), ``limit`` (the receiver's), ``peer`` (its name).
    """

    def __init__(self, size: int, limit: int, peer: str, message: str | None = None) -> None:
        self.size = size
        self.limit = limit
        self.peer = peer
        super().__init__(message or f"a message of {size} bytes is over {peer!r}'s limit of {limit} bytes "
                                    f"(its max_payload); nothing was sent")

    def __reduce__(self) -> tuple[Any, ...]:  # keep all attributes across pickling
        return (type(self), (self.size, self.limit, self.peer, str(self)))


class Closed(ZprokitError):
    """The node is closed; nothing more can be sent or awaited on it.

    By its owner (``close()``), or because its I/O thread failed (then the
    node's ``close_reason`` is the cause, and this error is chained to it), or
    because the node was made before a ``fork()`` and this is the child.
    """
