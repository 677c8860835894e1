"""Streams: a handler that yields, a caller that iterates, and credit between them.

The caller sends STREAM with ``count`` = its ``prefetch``: how many items the
producer may send ahead of what the consumer has taken. The producer sends
one ITEM per item and then END (an error body if it raised). As the consumer
takes items it returns credit with MORE, in batches of half its prefetch, so
a slow consumer holds the generator back and memory stays bounded on both
sides (and in the main, which forwards a window -> window stream as it comes).
The consumer's ``close()`` (or dropping the stream, or ``break`` out of a
``with`` block) sends CANCEL: the producer's generator is closed
(``GeneratorExit``; ``aclose()`` for an async one).

``ReplyStream`` is the consumer's end; ``produce`` runs the producer's.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
import logging
import threading
import types
import weakref
from typing import Any, AsyncIterator, Callable, Generic, Iterator, TypeVar

from ._calls import ServedCall
from ._dispatch import Dispatcher
from ._handoff import about_to_block
from .errors import Closed, QueueFull, Timeout
from .events import Event
from .protocol import Message
from .serializers import Serializer

log = logging.getLogger(__name__)

__all__ = ["ReplyStream", "Credit", "send_patiently", "live_streams", "MAX_PREFETCH", "is_stream", "streamed_answer", "is_stream_handler", "open_stream", "produce", "DEFAULT_PREFETCH", "check_prefetch"]

_T = TypeVar("_T")
DEFAULT_PREFETCH = 16
_END = object()  # the stream ended normally
_STREAMING_CODE = inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR


def is_stream_handler(handler: Callable[..., Any]) -> bool:
    """A handler that streams: a generator function or an async generator function (or an
    object whose ``__call__`` is one). Asked for every call a window serves: a plain function's
    (or method's) code flags answer at once, and only other callables go through ``inspect``."""
    code = getattr(handler, "__code__", None)
    if code is not None:
        return bool(code.co_flags & _STREAMING_CODE)
    for fn in (handler, getattr(type(handler), "__call__", None)):
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            return True
    return False


def live_streams(table: "weakref.WeakValueDictionary[int, ReplyStream[Any]]") -> list[tuple[int, "ReplyStream[Any]"]]:
    """The streams in ``table`` still alive, copied in one step: walking the table itself is not
    one step, and other threads add (callers) and remove (readers, the garbage collector)."""
    # The table's own dict of weak references (not in typeshed, long stable): list() copies it at once.
    refs = list(table.data.items())  # type: ignore[attr-defined]
    return [(key, stream) for key, ref in refs if (stream := ref()) is not None]


def _wake(waiter: concurrent.futures.Future[None] | None) -> None:
    """Wake whoever waits on ``waiter`` (an asyncio consumer may have cancelled it meanwhile)."""
    if waiter is not None:
        try:
            waiter.set_result(None)
        except concurrent.futures.InvalidStateError:
            pass


def is_stream(result: Any) -> bool:
    """What a streaming handler returns: a generator or an async generator."""
    return isinstance(result, (types.GeneratorType, types.AsyncGeneratorType))


def streamed_answer(result: Any, stream_call: str) -> TypeError | None:
    """A one-shot call's answer that is a stream (a handler that streams, found out only by calling
    it): closed, and the error that tells the caller to use ``stream_call``; else None."""
    if not is_stream(result):
        return None
    getattr(result, "close", lambda: None)()
    return TypeError(f"the handler answered with a stream: call {stream_call}")


MAX_PREFETCH = 500  # below ZeroMQ's queue of 1000 messages a connection: credit, not the queue, holds a producer
RETRY = 0.01  # s: how soon a send that found a full queue is tried again


def check_prefetch(prefetch: int) -> int:
    if not isinstance(prefetch, int) or isinstance(prefetch, bool) or not 1 <= prefetch <= MAX_PREFETCH:
        raise ValueError(f"prefetch must be a whole number from 1 to {MAX_PREFETCH}, got {prefetch!r}")
    return prefetch


def send_patiently(send: Callable[[], bool], call: ServedCall) -> bool:
    """A producer's ``send()`` (one that raises ``QueueFull``), tried again while the queue to its
    consumer is full: it waits there as it waits for credit, until it is cancelled."""
    while True:
        try:
            return send()
        except QueueFull:
            if call.token.wait(RETRY):
                return False


class ReplyStream(Generic[_T]):
    """The items a streaming handler yields, as they arrive.

    Iterable (``for item in stream``) and async-iterable (``async for``); a
    context manager whose exit closes it; ``close()``. ``timeout`` bounds the
    wait for each next item (``Timeout``; the stream stays open). The
    producer's exception arrives as ``RemoteError`` after the items before it;
    a producer that dies, or a peer that leaves, gives ``PeerLost``. Closing
    (or dropping the last reference to) a stream that has not ended tells
    the producer, whose generator is closed.
    """

    def __init__(
        self,
        description: str,
        timeout: float,
        prefetch: int,
        loads: Callable[[Any], Any],
        more: Callable[[int], None],
        cancel: Callable[[], None],
        peer: str = "",
        defer: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        self.description = description
        self.peer = peer  # the node producing it (the main's name for a window's stream from the main)
        self._timeout = timeout
        self._batch = max(1, prefetch // 2)  # credit is returned in batches of this many
        self._loads = loads
        self._more = more  # (n): send MORE
        self._cancel = cancel  # send CANCEL, forget the stream
        # Where a dropped stream's CANCEL is sent from (the node's I/O thread): __del__ may run
        # anywhere the garbage collector does, even in a thread that holds a socket's lock.
        self._defer = defer
        self._lock = threading.Lock()
        self._items: collections.deque[Any] = collections.deque()
        self._end: object | BaseException | None = None  # _END, or the exception that ended it
        self._waiter: concurrent.futures.Future[None] | None = None
        self._taken = 0  # items taken since credit was last returned

    # --- the node's side (the I/O thread) ---------------------------------------------

    def deliver(self, payload: Any) -> None:
        """One ITEM's (still serialized) payload."""
        with self._lock:
            if self._end is not None:
                return
            self._items.append(payload)
            waiter, self._waiter = self._waiter, None
        _wake(waiter)

    def finish(self, error: BaseException | None) -> None:
        """END (``error`` None), or why it ended (the producer's error, PeerLost, Closed)."""
        with self._lock:
            if self._end is not None:
                return
            self._end = _END if error is None else error
            waiter, self._waiter = self._waiter, None
        _wake(waiter)

    # --- the consumer's side ----------------------------------------------------------

    def _take(self) -> tuple[bool, Any, concurrent.futures.Future[None] | None]:
        """``(True, payload, None)``, or raise the end, or ``(False, None, waiter)`` to wait on."""
        with self._lock:
            if self._items:
                payload = self._items.popleft()
                self._taken += 1
                credit = self._taken if self._taken >= self._batch and self._end is None else 0
                if credit:
                    self._taken = 0
            elif self._end is not None:
                end = self._end
                if end is _END:
                    raise StopIteration
                assert isinstance(end, BaseException)
                self._end = _END  # said once: then the stream is simply over
                raise end
            else:  # one waiter for every consumer thread: all wake, one takes the item
                if self._waiter is None or self._waiter.done():
                    self._waiter = concurrent.futures.Future()
                return False, None, self._waiter
        if credit:
            self._more(credit)
        return True, payload, None

    def __iter__(self) -> Iterator[_T]:
        return self

    def __next__(self) -> _T:
        while True:
            ready, payload, waiter = self._take()
            if ready:
                return self._loads(payload)  # type: ignore[no-any-return]
            assert waiter is not None
            about_to_block()  # a handler on its loop's thread waits: the loop goes on elsewhere
            try:
                waiter.result(None if self._timeout == float("inf") else self._timeout)
            except concurrent.futures.TimeoutError:
                self._forget(waiter)
                raise Timeout(f"{self.description}: no item within {self._timeout} s") from None

    def __aiter__(self) -> AsyncIterator[_T]:
        return self

    async def __anext__(self) -> _T:
        while True:
            try:
                ready, payload, waiter = self._take()
            except StopIteration:
                raise StopAsyncIteration from None
            if ready:
                return self._loads(payload)  # type: ignore[no-any-return]
            assert waiter is not None
            try:
                await asyncio.wait_for(asyncio.wrap_future(waiter),
                                       None if self._timeout == float("inf") else self._timeout)
            except asyncio.TimeoutError:
                self._forget(waiter)
                raise Timeout(f"{self.description}: no item within {self._timeout} s") from None
            except asyncio.CancelledError:
                self._forget(waiter)
                raise

    def _forget(self, waiter: concurrent.futures.Future[None]) -> None:
        with self._lock:
            if self._waiter is waiter:
                self._waiter = None

    def close(self) -> None:
        """Stop receiving: the producer is told (its generator is closed). Idempotent."""
        with self._lock:
            if self._end is not None:
                return
            self._end = _END
            self._items.clear()
            waiter, self._waiter = self._waiter, None
        _wake(waiter)
        self._cancel()

    async def aclose(self) -> None:
        self.close()

    def __enter__(self) -> "ReplyStream[_T]":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> "ReplyStream[_T]":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if self._end is None:  # dropped while the producer still produces: tell it
            self._end = _END
            try:
                if self._defer is not None:
                    self._defer(self._cancel)
                else:
                    self._cancel()
            except Exception:  # at interpreter exit, or a node already gone: nothing to tell
                pass

    def __repr__(self) -> str:
        state = "open" if self._end is None else "ended"
        return f"<ReplyStream {self.description} {state}, {len(self._items)} waiting>"


class Credit:
    """How many items a producer may still send: ``more(n)`` from the I/O thread (a MORE), waited
    for by the producer; made on the I/O thread with the STREAM's count, before the producer runs,
    so no MORE is ever missed."""

    def __init__(self, initial: int) -> None:
        self.count = initial
        self.cond = threading.Condition()
        self.aloop: asyncio.AbstractEventLoop | None = None
        self.aevent: asyncio.Event | None = None

    def more(self, n: int) -> None:
        with self.cond:
            self.count += n
            self.cond.notify_all()
        self._wake_async()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()
        self._wake_async()

    def _wake_async(self) -> None:
        loop, event = self.aloop, self.aevent
        if loop is not None and event is not None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop is closed: the node is closing
                pass


def produce(
    dispatch: Dispatcher,
    call: ServedCall,
    stream: Any,
    gate: Credit,
    send_item: Callable[[Any], bool],
    send_end: Callable[[BaseException | None], None],
    done: Callable[[], None],
) -> None:
    """Run ``stream`` (the generator a handler returned), each item through ``send_item`` (False:
    the consumer cannot be reached, stop) as ``gate`` allows, then ``send_end``. A cancelled
    ``call`` stops it, closing the generator. ``done()`` once it has ended. Call on a pool thread:
    a sync generator runs on it; an async one on the dispatcher's asyncio loop."""
    if inspect.isasyncgen(stream):
        async def run() -> None:
            gate.aloop = asyncio.get_running_loop()
            gate.aevent = asyncio.Event()
            try:
                await _run_async(stream, call, gate, send_item, send_end)
            finally:
                gate.aloop = None

        try:
            cancel_task = dispatch.run_async(run(), lambda _: done())
        except BaseException as e:  # the dispatcher is closed
            send_end(Closed(f"cannot run the stream: {e}"))
            done()
            return
        def stop() -> None:
            gate.wake()
            cancel_task()

        call.stop = stop
        if call.cancelled:  # cancelled while it started
            cancel_task()
        return
    try:
        _run_sync(stream, call, gate, send_item, send_end)
    finally:
        done()


def _run_sync(stream: Iterator[Any], call: ServedCall, gate: Credit, send_item: Callable[[Any], bool],
              send_end: Callable[[BaseException | None], None]) -> None:
    try:
        while True:
            with gate.cond:
                while gate.count <= 0 and not call.cancelled:
                    gate.cond.wait()
                if call.cancelled:
                    return
                gate.count -= 1
            try:
                item = next(stream)
            except StopIteration:
                send_end(None)
                return
            if not send_item(item):
                return
    except BaseException as e:  # the generator raised (SystemExit too): the consumer is told
        if not call.cancelled:
            send_end(e)
    finally:
        _close_quietly(stream)


async def _run_async(stream: Any, call: ServedCall, gate: Credit, send_item: Callable[[Any], bool],
                     send_end: Callable[[BaseException | None], None]) -> None:
    assert gate.aevent is not None
    try:
        while True:
            while True:
                with gate.cond:
                    if call.cancelled:
                        return
                    if gate.count > 0:
                        gate.count -= 1
                        break
                    gate.aevent.clear()
                await gate.aevent.wait()
            try:
                item = await stream.__anext__()
            except StopAsyncIteration:
                send_end(None)
                return
            if not send_item(item):
                return
    except asyncio.CancelledError as e:
        if not call.cancelled:  # the generator's own CancelledError, not the consumer's: say so
            send_end(e)
        return
    except BaseException as e:
        if not call.cancelled:
            send_end(e)
    finally:
        try:
            await stream.aclose()
        except BaseException:  # its own finally raised: the consumer has gone, or been told
            log.debug("an async stream raised while it was closed", exc_info=True)


def _close_quietly(stream: Any) -> None:
    try:
        stream.close()
    except BaseException:  # its finally raised: the consumer has gone, or been told
        log.debug("a stream raised while it was closed", exc_info=True)


def open_stream(handler: Callable[..., Any], event: Event, serializer: Serializer, msg: Message,
                 one_shot: str) -> Any:
    """Call a stream handler: its generator, or the exception to end the stream with (the
    handler raised, or it does not stream: then the caller is told to use ``one_shot``)."""
    try:
        stream = handler(event, serializer.loads(msg.payload))
    except BaseException as e:  # the handler's own error, SystemExit included
        return e
    if is_stream(stream):
        return stream
    if inspect.isawaitable(stream):
        getattr(stream, "close", lambda: None)()  # an unawaited coroutine: closed, not warned about
    return TypeError(f"the handler of channel {msg.channel!r} does not stream: call {one_shot}")
