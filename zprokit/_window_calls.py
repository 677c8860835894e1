"""A window's own calls: requests, one-way messages and streams, and what their callers' cancels do.

Each call gets a message id; a request is kept in the pending table until it
is answered, times out or is cancelled (then its callee is told: CANCEL); a
stream in the link's table of streams until it ends or its consumer closes
it (CANCEL too). Through the main when ``target`` names a window or a group.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from ._calls import timeout_ms
from ._common import check_channel, check_timeout
from ._link import Link
from ._requests import PendingRequests, ReplyFuture, fail
from ._streams import RETRY, ReplyStream, check_prefetch
from .errors import PeerLost
from .protocol import Kind
from .serializers import Serializer
from .session import MAIN_NAME, WindowSession

__all__ = ["WindowCalls"]


class WindowCalls:
    """Makes a window's calls (any thread) and settles what its callers give up."""

    def __init__(self, link: Link, session: WindowSession, pending: PendingRequests, serializer: Serializer,
                 request_timeout: float, check_open: Callable[[], None]) -> None:
        self._link = link
        self._session = session
        self._pending = pending
        self._serializer = serializer
        self._request_timeout = request_timeout
        self._check_open = check_open  # raises Closed once the window is closed

    def request(
        self, kind: Kind, target: str, channel: str, msg: Any, timeout: float | None, description: str,
        count: int = 0, flags: int = 0,
    ) -> ReplyFuture[Any]:
        self._check_open()
        check_channel(channel)
        timeout = self._request_timeout if timeout is None else check_timeout(timeout)
        payload = self._serializer.dumps(msg)
        self._link.check_size(payload, target, channel)
        msg_id = self._session.next_id()
        # What to CANCEL when it times out or is cancelled: the main's handler (""), or a window's
        # (its name); a one-way message (None) has nothing to cancel.
        callee = target if kind == Kind.REQUEST else None
        future: ReplyFuture[Any] = ReplyFuture(description, self._link.read_for,
                                               functools.partial(self._cancel_call, msg_id, callee))
        if self._session.connected:
            self._pending.add(msg_id, future, timeout, callee)
            try:
                # A call made while others are in flight may wait a moment, to leave with the next.
                if self._link.send(kind, msg_id, target, channel, payload, raise_full=True,
                                   timeout_ms=timeout_ms(timeout), count=count, flags=flags,
                                   cork=len(self._pending) > 1):
                    return future
            except BaseException:  # QueueFull, or anything else: no entry is left behind
                self._pending.pop(msg_id)
                raise
            self._pending.pop(msg_id)
        fail(future, PeerLost(f"{description}: not connected to the main"))
        return future

    def _cancel_call(self, msg_id: int, callee: str | None) -> None:
        """The caller cancelled the future of ``msg_id``: forget it, and tell its handler."""
        if self._pending.pop(msg_id) is not None and callee is not None:
            self._link.send(Kind.CANCEL, msg_id, callee, "", ())

    def on_expired(self, msg_id: int, target: str | None) -> None:
        """A request timed out: tell its callee (through the main), which then does not start it."""
        if target is not None:
            self._link.send(Kind.CANCEL, msg_id, target, "", ())

    def stream(self, target: str, channel: str, msg: Any, timeout: float | None, prefetch: int,
                description: str) -> ReplyStream[Any]:
        self._check_open()
        check_channel(channel)
        limit = self._request_timeout if timeout is None else check_timeout(timeout)
        prefetch = check_prefetch(prefetch)
        payload = self._serializer.dumps(msg)
        self._link.check_size(payload, target, channel)
        msg_id, link = self._session.next_id(), self._link
        stream: ReplyStream[Any] = ReplyStream(
            description, limit, prefetch, self._serializer.loads,
            more=functools.partial(self._stream_more, msg_id, target),
            cancel=functools.partial(self._stream_cancel, msg_id, target), peer=target or MAIN_NAME,
            defer=link.call_soon)
        link.streams[msg_id] = stream
        try:
            # No timeout_ms: ``limit`` bounds the wait for each item, not the stream (no deadline).
            sent = link.send(Kind.STREAM, msg_id, target, channel, payload, raise_full=True, count=prefetch)
        except BaseException:
            link.streams.pop(msg_id, None)
            raise
        if not sent:
            link.streams.pop(msg_id, None)
            stream.finish(PeerLost(f"{description}: not connected to the main"))
        return stream

    def _stream_more(self, msg_id: int, target: str, count: int) -> None:
        """Credit back to the producer; tried again while the queue to the main is full (lost, the
        stream would stall), as long as the stream is open and the main there."""
        link = self._link
        if not link.send(Kind.MORE, msg_id, target, "", (), count=count) and msg_id in link.streams:
            if self._session.connected:
                link.call_later(RETRY, functools.partial(self._stream_more, msg_id, target, count))

    def _stream_cancel(self, msg_id: int, target: str) -> None:
        """The consumer closed (or dropped) stream ``msg_id``: forget it, and stop its producer."""
        self._link.streams.pop(msg_id, None)
        self._link.send(Kind.CANCEL, msg_id, target, "", ())
