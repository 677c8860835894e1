"""What windows send to windows, carried by the main, and the credit of one-way messages.

A routed REQUEST gets a message id of the main's (a ``Route`` back to its
caller's id, kept by the session); its REPLY or ERROR goes back under the
caller's id, and a CANCEL follows it to the window that has it. Payloads are
forwarded as they came, never unpickled here.

A group call (a REQUEST with ``FLAG_GROUP``: ``target`` names a group,
``count`` how many times it may be retried) goes to the group's least-loaded
member (``Balancer``), as an ordinary routed request; its route keeps what it
takes to send it on (``GroupJob``), so when that member leaves with it, it
goes to another member while retries and the caller's time remain.

Flow control: a window reads at most its ``max_queued`` one-way messages
that it has not handled (its *credit*, returned with CREDIT as it handles
them). Past that, routed ones wait here (at most as many again, their ACKs
held back, so their senders slow down) and ``main_msg_to_render`` waits for
room. ``lock`` guards every window's ``in_flight`` and ``waiting``.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from . import protocol
from ._calls import timeout_ms
from ._common import MAX_WAIT
from ._groups import empty_group
from ._serve import check_size
from ._streams import RETRY
from .errors import MessageTooLarge, PeerLost, QueueFull, WindowNotFound
from .protocol import FLAG_GROUP, Kind, Message, normalize_name
from .session import GroupJob, Peer, Route

if TYPE_CHECKING:
    from ._router import Router

log = logging.getLogger("zprokit.main")

__all__ = ["Relay"]


class Relay:
    """Window -> window routing and one-way credit; see the module docstring."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._session = router.session
        self.lock = threading.Lock()  # every window's in_flight and waiting
        self._freed = threading.Condition(self.lock)  # a CREDIT came, or a window left
        self._due: list[tuple[str, Message]] = []  # routed in a batch of the loop: sent when it ends
        # While the due ones are routed: one-way messages to forward, by target, to leave as BATCHes.
        self._runs: dict[int, tuple[Peer, list[tuple[str, Message]]]] | None = None

    # --- routing (I/O thread) --------------------------------------------------------

    def route_soon(self, source: str, msg: Message) -> None:
        """``route`` now, or, in a batch on the loop, when the batch ends (with its other sends)."""
        if self._router.batching and self._router.in_loop():
            self._due.append((source, msg))
        else:
            self._route(source, msg)

    def flush(self) -> None:
        """The end of a batch on the loop: route what it brought, the one-way messages to one
        window in BATCHes (one frame, one MAC), and their ACKs to each sender too."""
        if not self._due:
            return
        due, self._due = self._due, []
        self._runs = {}
        try:
            for source, msg in due:  # in the order they came: one-way messages keep their order
                try:
                    self._route(source, msg)
                except Exception:
                    log.exception("main: error routing a message from %r", source)
        finally:
            runs, self._runs = self._runs, None
        acks: dict[str, list[int]] = {}
        for target, items in runs.values():
            try:
                self._forward_run(target, items, acks)
            except Exception:
                log.exception("main: error routing messages to %r", target.name)
        for source, ids in acks.items():
            self._ack(source, ids)

    def _route(self, source: str, msg: Message) -> None:
        """Forward a window's MESSAGE or REQUEST to its target window, payload untouched."""
        if msg.flags & FLAG_GROUP:
            self._route_to_group(source, msg)
            return
        router = self._router
        target = self._session.windows.get(normalize_name(msg.target))
        if target is None:
            router.send_error(source, msg.msg_id, WindowNotFound(msg.target))
            return
        msg.target = target.name
        try:
            check_size(target, msg.payload, msg.channel, source)
        except MessageTooLarge as e:
            router.send_error(source, msg.msg_id, e)
            return
        if msg.kind == Kind.MESSAGE:
            if self._take_credit(target, source, msg):
                self._forward(target, source, msg)
            return
        # a REQUEST or a STREAM, under our msg_id
        if not self._carry(source, msg.msg_id, target, msg.channel, msg.payload, msg.timeout_ms, kind=msg.kind,
                           count=msg.count):
            router.send_error(source, msg.msg_id, WindowNotFound(target.name))

    def _carry(self, source: str, source_msg_id: int, target: Peer, channel: str, payload: Any, timeout: int,
               job: GroupJob | None = None, kind: Kind = Kind.REQUEST, count: int = 0) -> bool:
        """Send request ``source_msg_id`` of ``source`` on to ``target`` under a route back to its
        caller (``timeout``: its ``timeout_ms``; ``job``: a group call's). False if ``target`` could
        not be reached (it is dropped; nothing was sent, no route is left); else it went, or its
        caller was told why not (``QueueFull``)."""
        router = self._router
        msg_id = self._session.next_id()
        try:
            sent = router.send_to(target.name, kind, msg_id, channel, payload, origin=source,
                                  raise_full=True, timeout_ms=timeout, count=count)
        except QueueFull as e:
            router.send_error(source, source_msg_id, e)
            return True
        if not sent:
            return False
        # The route is made after the send: this (the I/O thread) is the only reader of answers, so
        # none is read before it is in place; and a target dropped by the send has no route to fail.
        self._session.add_route(source, source_msg_id, target.name, job, msg_id=msg_id)
        router.stats["messages_routed"] += 1
        return True

    # --- group calls (I/O thread) ------------------------------------------------------

    def _route_to_group(self, source: str, msg: Message) -> None:
        """A window's group call (``render_call_any``): to the least-loaded member of ``msg.target``."""
        if msg.kind != Kind.REQUEST:  # only a call goes to "any member"
            self._router.reject("malformed", f"a group {msg.kind.name} from {source!r}")
            return
        group = normalize_name(msg.target)
        deadline = time.monotonic() + msg.timeout_ms / 1000 if msg.timeout_ms else math.inf
        job = GroupJob(group, msg.count, msg.channel, msg.payload, deadline)
        self._to_member(source, msg.msg_id, job, empty_group(group), msg.timeout_ms)

    def send_on(self, route: Route, lost: PeerLost) -> bool:
        """``route``'s target left with it: a group call with retries and time left goes to another
        member (True; if there is none, its caller gets ``lost``). False: its caller is to be told."""
        job = route.job
        now = time.monotonic()
        if job is None or job.retries <= 0 or now >= job.deadline or route.source not in self._session.windows:
            return False
        job.retries -= 1
        self._to_member(route.source, route.source_msg_id, job, lost,
                        0 if job.deadline == math.inf else timeout_ms(job.deadline - now))
        return True

    def _to_member(self, source: str, source_msg_id: int, job: GroupJob, none_left: Exception, timeout: int) -> None:
        """Send group call ``job`` to the least-loaded member it has not been to; with none, its
        caller gets ``none_left``. A member found unreachable as it is sent to (it is dropped) is
        passed over without spending a retry: it never had the call."""
        router = self._router
        while True:
            target = router.balancer.pick(job.group, job.tried)
            if target is None:
                router.send_error(source, source_msg_id, none_left)
                return
            job.tried.add(target.name)
            try:
                check_size(target, job.payload, job.channel, source)
            except MessageTooLarge as e:
                router.send_error(source, source_msg_id, e)
                return
            if self._carry(source, source_msg_id, target, job.channel, job.payload, timeout, job):
                return

    def _take_credit(self, target: Peer, source: str, msg: Message) -> bool:
        """True if ``msg`` may go now (its credit taken); else it waits here, or is refused."""
        with self.lock:
            if target.credit is None:
                return True
            if not target.waiting and target.in_flight < target.credit:
                target.in_flight += 1
                return True
            if target.waiting is None:
                target.waiting = collections.deque()
            if len(target.waiting) < target.credit:  # held, its ACK with it: the sender slows down
                target.waiting.append((source, msg))
                return False
        with self._router.sock.lock:  # senders count it too, under the lock
            self._router.stats["dropped_hwm"] += 1
        self._router.send_error(source, msg.msg_id, QueueFull(
            target.name, f"window {target.name!r} is not keeping up: {target.in_flight} one-way messages "
                         f"unhandled and {len(target.waiting)} more held; nothing was sent"))
        return False

    def _forward_run(self, target: Peer, items: list[tuple[str, Message]], acks: dict[str, list[int]]) -> None:
        """Send on the one-way messages for ``target`` routed in one batch, in order: a run of
        small ones as one BATCH; the ACKs of those that left go in ``acks``, by sender."""
        router = self._router
        records = [protocol.batch_item(Kind.MESSAGE, 0, msg.payload[0], source, target.name, msg.channel)
                   if len(msg.payload) == 1 else None for source, msg in items]
        for start, end in protocol.batch_runs([None if r is None else len(r) for r in records],
                                              protocol.batch_room(target.max_size)):
            if end - start == 1:
                self._forward(target, *items[start])
                continue
            part = items[start:end]
            data = b"".join(cast(bytes, r) for r in records[start:end])  # a run of several: each one has its record
            try:
                sent = router.send_to(target.name, Kind.BATCH, 0, "", [data], raise_full=True, count=len(part))
            except QueueFull as e:  # each sender's future fails with it: backpressure reaches them
                self.give_back(target, len(part))
                for source, msg in part:
                    router.send_error(source, msg.msg_id, e)
                continue
            if not sent:
                for source, msg in part:
                    router.send_error(source, msg.msg_id, WindowNotFound(target.name))
                continue
            with router.sock.lock:  # the senders' counters
                router.stats["messages_out"] += len(part) - 1
            router.stats["messages_routed"] += len(part)
            for source, msg in part:
                acks.setdefault(source, []).append(msg.msg_id)

    def _ack(self, source: str, ids: list[int]) -> None:
        """ACK routed one-way messages ``ids`` of ``source``: several as one BATCH."""
        router = self._router
        peer = self._session.windows.get(source)
        if peer is None:
            return  # it left: nobody to tell
        for start, end in protocol.batch_runs([protocol.BATCH_RECORD] * len(ids), protocol.batch_room(peer.max_size)):
            if end - start == 1:
                router.send_to(source, Kind.ACK, ids[start])
                continue
            chunk = ids[start:end]  # within what the sender reads: it may read little
            if router.send_to(source, Kind.BATCH, 0, "", [b"".join(protocol.batch_item(Kind.ACK, msg_id, b"")
                                                                  for msg_id in chunk)], count=len(chunk)):
                with router.sock.lock:
                    router.stats["messages_out"] += len(chunk) - 1

    def _forward(self, target: Peer, source: str, msg: Message) -> None:
        """Send a routed one-way message on, its credit taken; ACK its sender. While the loop
        routes a batch's messages, it is kept for the run to its target (see ``flush``)."""
        if self._runs is not None:
            self._runs.setdefault(id(target), (target, []))[1].append((source, msg))
            return
        router = self._router
        try:
            sent = router.send_to(target.name, Kind.MESSAGE, 0, msg.channel, msg.payload, origin=source,
                                  raise_full=True)
        except QueueFull as e:  # the sender's future fails with it: backpressure reaches the sender
            self.give_back(target, 1)
            router.send_error(source, msg.msg_id, e)
            return
        if sent:
            router.stats["messages_routed"] += 1
            router.send_to(source, Kind.ACK, msg.msg_id)
        else:
            router.send_error(source, msg.msg_id, WindowNotFound(target.name))

    def answer(self, peer: Peer, msg: Message) -> bool:
        """A REPLY, ERROR, ITEM or END from ``peer``: if it answers a routed request or stream,
        pass it back to the caller under its own id and return True. (An ITEM keeps the route:
        more follow.)"""
        session = self._session
        if msg.kind == Kind.ITEM:
            route = session.streaming_route(msg.msg_id, peer.name)
        else:
            route = session.answered_route(msg.msg_id, peer.name)
        if route is None:
            return False
        source = session.windows.get(route.source)
        if source is not None and (msg.kind == Kind.REPLY or msg.kind == Kind.ITEM):
            try:
                check_size(source, msg.payload, "", peer.name)
            except MessageTooLarge as e:  # the caller is told now, not by its timeout
                if msg.kind == Kind.ITEM:  # and the stream ends: its producer is stopped
                    session.pop_route(msg.msg_id)
                    self._router.send_to(peer.name, Kind.CANCEL, msg.msg_id, origin=route.source)
                self._router.send_error(route.source, route.source_msg_id, e)
                return True
        if msg.kind != Kind.ITEM:
            self._router.send_to(route.source, msg.kind, route.source_msg_id, "", msg.payload, origin=peer.name)
            return True
        try:  # an item is never dropped silently: a stream whose consumer's queue is full ends, and says so
            self._router.send_to(route.source, Kind.ITEM, route.source_msg_id, "", msg.payload, origin=peer.name,
                                 raise_full=True)
        except QueueFull as e:
            session.pop_route(msg.msg_id)
            self._router.send_to(peer.name, Kind.CANCEL, msg.msg_id, origin=route.source)
            self._router.send_error(route.source, route.source_msg_id, e)
        return True

    def more(self, source: str, source_msg_id: int, count: int) -> None:
        """The consumer ``source`` of a routed stream took ``count`` more items: its producer may
        send that many more (MORE, under our id)."""
        found = self._session.route_of(source, source_msg_id)
        if found is not None:
            msg_id, route = found
            if not self._router.send_to(route.target, Kind.MORE, msg_id, origin=source, count=count):
                # The queue to the producer is full (or it left: then the route is gone). Lost, the
                # credit would stall the stream: tried again while the route lives.
                self._router.call_later(RETRY, functools.partial(self.more, source, source_msg_id, count))

    def cancel(self, source: str, source_msg_id: int) -> None:
        """``source`` gave up its routed request: not routed yet, it never will be; else the
        window that has it is told."""
        for i, (from_, due) in enumerate(self._due):  # not routed yet (same batch): never will be
            if from_ == source and due.msg_id == source_msg_id and due.kind in (Kind.REQUEST, Kind.STREAM):
                del self._due[i]
                return
        cancelled = self._session.cancel_route(source, source_msg_id)
        if cancelled is not None:
            msg_id, route = cancelled
            self._router.send_to(route.target, Kind.CANCEL, msg_id, origin=source)

    # --- credit ----------------------------------------------------------------------

    def credit(self, peer: Peer, count: int) -> None:
        """The window handled ``count`` more one-way messages: send on what waited for room."""
        released = []
        with self._freed:
            peer.in_flight = max(0, peer.in_flight - count)
            while peer.waiting and peer.credit is not None and peer.in_flight < peer.credit:
                released.append(peer.waiting.popleft())
                peer.in_flight += 1
            self._freed.notify_all()
        for source, held in released:  # in the order they came
            self._forward(peer, source, held)

    def give_back(self, peer: Peer, count: int) -> None:
        """Credit taken for a message that did not leave."""
        with self._freed:
            peer.in_flight = max(0, peer.in_flight - count)
            self._freed.notify_all()

    def reserve(self, peer: Peer, limit: float) -> None:
        """Take one credit of ``peer`` for the main's own one-way message (any thread), waiting
        at most ``limit`` s for room; else ``QueueFull`` (or ``WindowNotFound`` if it left)."""
        windows = self._session.windows
        with self._freed:
            deadline = math.inf
            while peer.credit is not None and (peer.waiting or peer.in_flight >= peer.credit):
                if windows.get(peer.name) is not peer:
                    raise WindowNotFound(peer.name)
                now = time.monotonic()
                deadline = min(deadline, now + limit)
                if now >= deadline:
                    with self._router.sock.lock:
                        self._router.stats["dropped_hwm"] += 1
                    raise QueueFull(peer.name, f"window {peer.name!r} has had {peer.in_flight} one-way messages "
                                               f"unhandled (its max_queued) for {limit} s; nothing was sent")
                self._freed.wait(min(deadline - now, MAX_WAIT))
            if peer.credit is not None:
                peer.in_flight += 1

    def wake(self) -> None:
        """Every sender waiting for room looks again (the main closed)."""
        with self._freed:
            self._freed.notify_all()

    def window_left(self, peer: Peer, lost: BaseException) -> None:
        """``peer`` left (I/O thread): routed one-way messages that waited for it fail, and
        senders waiting for its room learn it is gone."""
        with self._freed:
            held, peer.waiting = list(peer.waiting or ()), None
            self._freed.notify_all()
        for source, msg in held:
            self._router.send_error(source, msg.msg_id, lost)
