"""Worker groups: which member takes a call, and the main's own calls to windows.

A window joins groups when it connects (``Window(groups=...)``); the main's
session keeps them (``MainSession.groups``). A group call goes to one live
member, the least loaded: the fewest of the main's calls in flight to it (the
main's own, ``Peer.calls``, and the window -> window requests the main carries
to it, ``Peer.routed``); among equals the one picked longest ago, so equals
take calls in turn. ``Balancer`` makes that pick and counts the main's own
calls, under its ``lock``: callers' threads and the I/O thread pick at once.

``MainCalls`` are the main's own calls: to one window (``main_call_render``),
to one member of a group, sent on to another when a member leaves with it
(``call_any``), and to every member (``call_all``). A window's group call
(``render_call_any``) is carried by the ``Relay``.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Collection

from ._calls import timeout_ms
from ._common import check_channel, check_group, check_retries, check_timeout
from ._requests import PendingRequests, ReplyFuture
from ._serve import check_size
from ._streams import RETRY, ReplyStream
from .errors import PeerLost, WindowNotFound, ZprokitError
from .protocol import Kind
from .serializers import Serializer
from .session import MainSession, Peer, least_loaded

if TYPE_CHECKING:
    from ._router import Router

__all__ = ["Balancer", "MainCalls", "empty_group"]


def empty_group(group: str) -> WindowNotFound:
    """What a call to a group with no live member fails with."""
    return WindowNotFound(group, f"no window in group {group!r}")


class Balancer:
    """The least-loaded pick (``least_loaded``), and the count of the main's own calls in flight
    to each window. ``lock`` guards every window's ``calls`` and ``picked``."""

    def __init__(self, session: MainSession) -> None:
        self._session = session
        self.lock = threading.Lock()
        self._turns = itertools.count(1)  # when each pick was made: equals take turns by it

    def pick(self, group: str, exclude: Collection[str] = (), *, hold: bool = False) -> Peer | None:
        """The member of ``group`` (not in ``exclude``) to take the next call, or None if there is
        none. With ``hold`` it is counted as one of the main's calls at once (``release`` it when
        the call ends), so callers that pick at the same time spread out."""
        members = self._session.members(group)
        with self.lock:
            peer = least_loaded(members, exclude)
            if peer is not None:
                peer.picked = next(self._turns)
                if hold:
                    peer.calls += 1
        return peer

    def hold(self, peer: Peer) -> None:
        """One more of the main's calls in flight to ``peer``."""
        with self.lock:
            peer.calls += 1

    def release(self, peer: Peer, _future: object = None) -> None:
        """One of the main's calls to ``peer`` ended (a done-callback: any thread)."""
        with self.lock:
            peer.calls -= 1


class MainCalls:
    """The main's own calls to windows, each counted in its window's load until it ends."""

    def __init__(self, router: Router, pending: PendingRequests, session: MainSession, serializer: Serializer,
                 request_timeout: float, check_open: Callable[[], None]) -> None:
        self._check_open = check_open  # raises Closed once the main is closed
        self._router = router
        self._pending = pending
        self._session = session
        self._serializer = serializer
        self._request_timeout = request_timeout
        self.balancer = router.balancer

    def send(self, peer: Peer, payload: Any, channel: str, limit: float, description: str,
             held: bool = False) -> ReplyFuture[Any] | None:
        """Ask window ``peer`` (``payload`` serialized, its size checked): the call's future, or
        None if the window is gone (nothing sent, nothing left behind). Raises ``QueueFull``
        (nothing sent). ``held``: the ``Balancer`` counted it already, when it picked ``peer``."""
        if not held:
            self.balancer.hold(peer)
        msg_id = self._session.next_id()
        future: ReplyFuture[Any] = ReplyFuture(description, on_cancel=functools.partial(self.cancel, msg_id, peer.name))
        self._pending.add(msg_id, future, limit, target=peer.name)
        try:
            sent = self._router.send_to(peer.name, Kind.REQUEST, msg_id, channel, payload, raise_full=True,
                                        timeout_ms=timeout_ms(limit))
        except BaseException:  # QueueFull, or anything else: no entry is left behind
            self._pending.pop(msg_id)
            self.balancer.release(peer)
            raise
        if not sent:
            self._pending.pop(msg_id)
            self.balancer.release(peer)
            return None
        # Released when the call ends, however it ends (at once if it has ended already).
        future.add_done_callback(functools.partial(self.balancer.release, peer))
        return future

    def message(self, peer: Peer, payload: Any, channel: str, limit: float) -> bool:
        """Send a one-way message to window ``peer`` once it has room (its credit), waiting at
        most ``limit`` s (then ``QueueFull``); False if the window is gone (nothing sent)."""
        relay = self._router.relay
        try:
            relay.reserve(peer, limit)
        except WindowNotFound:
            self._check_open()  # gone because this main closed meanwhile: Closed, not "not found"
            raise
        try:
            sent = self._router.send_to(peer.name, Kind.MESSAGE, 0, channel, payload, raise_full=True)
        except BaseException:
            relay.give_back(peer, 1)
            raise
        return sent

    def stream(self, peer: Peer, payload: Any, channel: str, limit: float, prefetch: int,
               description: str) -> ReplyStream[Any] | None:
        """Open a stream from window ``peer``'s streaming callback: its ``ReplyStream``, or None if
        the window is gone (nothing sent, nothing left behind). Raises ``QueueFull``."""
        router, msg_id = self._router, self._session.next_id()
        stream: ReplyStream[Any] = ReplyStream(
            description, limit, prefetch, self._serializer.loads,
            more=functools.partial(self._stream_more, msg_id, peer.name),
            cancel=functools.partial(self._stream_cancel, msg_id, peer.name), peer=peer.name,
            defer=router.call_soon)
        router.streams[msg_id] = stream
        try:
            # No timeout_ms: ``limit`` bounds the wait for each item, not the stream (no deadline).
            sent = router.send_to(peer.name, Kind.STREAM, msg_id, channel, payload, raise_full=True, count=prefetch)
        except BaseException:
            router.streams.pop(msg_id, None)
            raise
        if not sent:
            router.streams.pop(msg_id, None)
            return None
        return stream

    def _stream_more(self, msg_id: int, name: str, count: int) -> None:
        """Credit back to the producer; tried again while the queue to it is full (lost, the
        stream would stall), as long as the stream is open."""
        if not self._router.send_to(name, Kind.MORE, msg_id, count=count) and msg_id in self._router.streams:
            self._router.call_later(RETRY, functools.partial(self._stream_more, msg_id, name, count))

    def _stream_cancel(self, msg_id: int, name: str) -> None:
        """The consumer closed (or dropped) stream ``msg_id``: forget it, and stop its producer."""
        self._router.streams.pop(msg_id, None)
        if not self._router.closing:
            self._router.send_to(name, Kind.CANCEL, msg_id)

    def _limit(self, timeout: float | None) -> float:
        return self._request_timeout if timeout is None else check_timeout(timeout)

    def on_expired(self, msg_id: int, target: str | None) -> None:
        """Our call ``msg_id`` timed out: tell the window, so it does not start it late."""
        if target is not None:
            self._router.send_to(target, Kind.CANCEL, msg_id)

    def cancel(self, msg_id: int, name: str) -> None:
        """The caller cancelled the future of ``msg_id``: forget it, and tell the window's callback."""
        if self._pending.pop(msg_id) is not None:
            self._router.send_to(name, Kind.CANCEL, msg_id)

    def call_any(self, group: str, msg: Any, channel: str, timeout: float | None, retries: int) -> ReplyFuture[Any]:
        """``Main.call_any``: raises ``WindowNotFound`` at once if ``group`` has no member, and
        ``ValueError`` for a bad argument."""
        self._check_open()
        group, limit = check_group(group), self._limit(timeout)
        check_channel(channel)
        call = _AnyCall(self, group, self._serializer.dumps(msg), channel, limit, check_retries(retries))
        if not call.send():
            self._check_open()  # no member because this main closed meanwhile: Closed, not "not found"
            raise empty_group(group)
        return call.future

    def call_all(self, group: str | None, msg: Any, channel: str, timeout: float | None) -> ReplyFuture[dict[str, Any]]:
        """``Main.call_all``: every member of ``group`` (every window for None) at this moment."""
        self._check_open()
        group = None if group is None else check_group(group)
        limit = self._limit(timeout)
        check_channel(channel)
        payload = self._serializer.dumps(msg)
        description = f"call_all({'' if group is None else repr(group) + ', '}channel={channel!r})"
        members = self._session.members(group)
        gather = _Gather(description, [peer.name for peer in members])
        for peer in members:
            try:
                check_size(peer, payload, channel)
                member = self.send(peer, payload, channel, limit, f"{description} to {peer.name!r}")
            except ZprokitError as e:  # QueueFull, MessageTooLarge: that member's answer
                gather.settle(peer.name, e)
                continue
            if member is None:
                gather.settle(peer.name, WindowNotFound(peer.name))
            else:
                gather.add(peer.name, member)
        return gather.future


class _AnyCall:
    """One ``call_any``: the future its caller holds, and the member's call behind it, sent on
    to another member (one that has not had it) when its member leaves (``PeerLost``) while
    retries and time remain."""

    def __init__(self, calls: MainCalls, group: str, payload: Any, channel: str, limit: float, retries: int) -> None:
        self._calls = calls
        self._group, self._payload, self._channel = group, payload, channel
        self._retries = retries
        self._deadline = time.monotonic() + limit  # one timeout over every member it goes to
        self._tried: set[str] = set()
        self._lock = threading.Lock()  # the member's call now, and whether the caller gave up
        self._member: ReplyFuture[Any] | None = None
        self._cancelled = False
        self.future: ReplyFuture[Any] = ReplyFuture(f"call_any({group!r}, channel={channel!r})",
                                                    on_cancel=self._cancel)

    def send(self) -> bool:
        """Send the call to the least-loaded member it has not been to; False if there is none.
        A member that left just as it was sent is passed over, without spending a retry.
        Raises what the send raises (``QueueFull``, ``MessageTooLarge``)."""
        calls = self._calls
        while True:
            peer = calls.balancer.pick(self._group, self._tried, hold=True)
            if peer is None:
                return False
            self._tried.add(peer.name)
            try:
                check_size(peer, self._payload, self._channel)
            except BaseException:
                calls.balancer.release(peer)
                raise
            limit = max(0.0, self._deadline - time.monotonic())
            member = calls.send(peer, self._payload, self._channel, limit,
                                f"{self.future.description} to {peer.name!r}", held=True)
            if member is not None:
                break
        with self._lock:
            self._member = member
            cancelled = self._cancelled
        if cancelled:  # the caller gave up while it was being sent
            member.cancel()
        member.add_done_callback(self._member_done)
        return True

    def _member_done(self, member: concurrent.futures.Future[Any]) -> None:
        """The member's call ended (any thread): the caller's answer, or on to another member."""
        if self.future.done():  # cancelled by its caller
            return
        error = concurrent.futures.CancelledError() if member.cancelled() else member.exception()
        if isinstance(error, PeerLost) and self._retries > 0 and time.monotonic() < self._deadline:
            self._retries -= 1
            try:
                if self.send():
                    return
            except ZprokitError as e:  # the next member is full, or reads less: the caller is told that
                error = e
            # No other member: the PeerLost stands.
        _settle(self.future, None if error is not None else member.result(), error)

    def _cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            member = self._member
        if member is not None:
            member.cancel()


class _Gather:
    """``call_all``'s future: ``{member: its result, or its exception}`` once every member's
    call has ended; cancelling it cancels every one of them."""

    def __init__(self, description: str, names: list[str]) -> None:
        self._results: dict[str, Any] = dict.fromkeys(names)  # in the members' order
        self._waiting = len(names)
        self._members: list[ReplyFuture[Any]] = []
        self._lock = threading.Lock()  # the results, and the calls to cancel
        self.future: ReplyFuture[dict[str, Any]] = ReplyFuture(description, on_cancel=self._cancel)
        if not names:
            self.future.set_result({})

    def add(self, name: str, member: ReplyFuture[Any]) -> None:
        with self._lock:
            self._members.append(member)
        if self.future.cancelled():  # cancelled while the calls were being sent
            member.cancel()
        member.add_done_callback(functools.partial(self._member_done, name))

    def _member_done(self, name: str, member: concurrent.futures.Future[Any]) -> None:
        if member.cancelled():
            self.settle(name, concurrent.futures.CancelledError())
            return
        error = member.exception()
        self.settle(name, member.result() if error is None else error)

    def settle(self, name: str, value: Any) -> None:
        """Member ``name`` answered ``value`` (a result, or an exception object)."""
        with self._lock:
            self._results[name] = value
            self._waiting -= 1
            results = dict(self._results) if self._waiting == 0 else None
        if results is not None:
            _settle(self.future, results, None)

    def _cancel(self) -> None:
        with self._lock:
            members = list(self._members)
        for member in members:
            member.cancel()


def _settle(future: ReplyFuture[Any], result: Any, error: BaseException | None) -> None:
    """Resolve ``future`` with ``error``, else ``result``, unless its caller cancelled it meanwhile."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:  # cancelled by its caller just now
        pass
