"""Streams: generator handlers stream to a ReplyStream, with credit, in every direction.

Each test names the promise it checks: order, flow control (a slow consumer
holds the producer back, through the main too), the consumer stopping early
(break, close, drop, ``with``) closing the producer's generator, errors after
the items before them, a producer's side dying (PeerLost), the per-item
timeout, a one-shot call to a streaming handler failing at once, async
generators and ``async for``, and across processes. Every table goes back
to empty.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading

import pytest

from conftest import TESTS_DIR, Inbox, idle, wait_until
from zprokit import Main, PeerLost, RemoteError, Timeout

pytestmark = pytest.mark.timeout(60)
WAIT = 10.0


@pytest.fixture
def main(zprokit_main: Main) -> Main:
    return zprokit_main


class Counting:
    """A generator handler that counts what it yielded and says when its generator is closed."""

    def __init__(self) -> None:
        self.yielded = 0
        self.closed = threading.Event()

    def __call__(self, event, limit):
        try:
            for i in range(limit):
                self.yielded += 1
                yield i
        finally:
            self.closed.set()


def test_a_main_handler_streams_to_a_window_in_order(main, zprokit_window):
    window = zprokit_window()
    main.on_msg_from_render(Counting(), channel="count")
    assert list(window.render_stream_from_main(100, channel="count", prefetch=8)) == list(range(100))
    assert wait_until(lambda: idle(main, window), WAIT)


def test_a_window_async_generator_streams_to_the_main(main, zprokit_window):
    window = zprokit_window("producer")

    @window.on_msg_from_main(channel="squares")
    async def squares(event, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i * i

    assert list(main.main_stream_from_render("producer", 20, channel="squares")) == [i * i for i in range(20)]
    assert wait_until(lambda: idle(main, window), WAIT)


def test_a_window_streams_to_another_window_through_the_main(main, zprokit_window):
    consumer, producer = zprokit_window("consumer"), zprokit_window("producer")
    producer.on_render_msg_to_render(Counting(), channel="count")
    stream = consumer.render_stream_from_render("producer", 50, channel="count", prefetch=4)
    assert list(stream) == list(range(50))
    assert wait_until(lambda: idle(main, consumer, producer), WAIT)


@pytest.mark.parametrize("route", ["main to window", "window to window"])
def test_a_slow_consumer_holds_the_producer_back(main, zprokit_window, route):
    consumer, producer = zprokit_window("consumer"), zprokit_window("producer")
    counting = Counting()
    if route == "main to window":
        main.on_msg_from_render(counting, channel="count")
        stream = consumer.render_stream_from_main(10_000, channel="count", prefetch=8)
    else:
        producer.on_render_msg_to_render(counting, channel="count")
        stream = consumer.render_stream_from_render("producer", 10_000, channel="count", prefetch=8)
    assert wait_until(lambda: counting.yielded == 8, WAIT)
    assert not wait_until(lambda: counting.yielded > 8, 0.5), "the producer ran ahead of its credit"
    taken = [next(stream) for _ in range(4)]  # half the prefetch taken: that much credit goes back
    assert taken == [0, 1, 2, 3]
    assert wait_until(lambda: counting.yielded == 12, WAIT)
    assert not wait_until(lambda: counting.yielded > 12, 0.5), "the producer ran ahead of its credit"
    stream.close()
    assert counting.closed.wait(WAIT)


def test_break_and_close_end_the_producers_generator(main, zprokit_window):
    window = zprokit_window()
    counting = Counting()
    main.on_msg_from_render(counting, channel="count")
    stream = window.render_stream_from_main(10**9, channel="count", prefetch=16)
    for item in stream:
        if item == 40:
            break
    stream.close()
    assert counting.closed.wait(WAIT)
    assert counting.yielded < 40 + 2 * 16  # stopped within its credit of where the consumer stopped
    assert wait_until(lambda: idle(main, window), WAIT)


def test_dropping_a_stream_ends_the_producers_generator(main, zprokit_window):
    window = zprokit_window()
    counting = Counting()
    main.on_msg_from_render(counting, channel="count")
    stream = window.render_stream_from_main(10**9, channel="count")
    assert next(stream) == 0
    del stream
    gc.collect()
    assert counting.closed.wait(WAIT)
    assert wait_until(lambda: idle(main, window), WAIT)


def test_leaving_a_with_block_ends_the_producers_generator(main, zprokit_window):
    producer = zprokit_window("producer")
    counting = Counting()
    producer.on_msg_from_main(counting, channel="count")
    with main.main_stream_from_render("producer", 10**9, channel="count") as stream:
        assert [next(stream) for _ in range(3)] == [0, 1, 2]
    assert counting.closed.wait(WAIT)
    assert wait_until(lambda: idle(main, producer), WAIT)


def test_a_producers_error_comes_after_the_items_before_it(main, zprokit_window):
    window = zprokit_window()

    @main.on_msg_from_render(channel="fails")
    def fails(event, args):
        yield "a"
        yield "b"
        raise ValueError("the third went wrong")

    stream = window.render_stream_from_main(None, channel="fails")
    assert [next(stream), next(stream)] == ["a", "b"]
    with pytest.raises(RemoteError) as raised:
        next(stream)
    assert raised.value.remote_type == "ValueError" and "the third went wrong" in str(raised.value)
    with pytest.raises(StopIteration):  # ended: it stays ended
        next(stream)
    assert wait_until(lambda: idle(main, window), WAIT)


def test_a_producer_that_goes_mid_stream_gives_peer_lost(main, zprokit_window):
    producer = zprokit_window("producer")
    producer.on_msg_from_main(Counting(), channel="count")
    stream = main.main_stream_from_render("producer", 10**9, channel="count")
    assert next(stream) == 0
    producer.close()
    with pytest.raises(PeerLost):
        for _ in stream:
            pass
    assert wait_until(lambda: idle(main), WAIT)


def test_timeout_bounds_the_wait_for_each_item(main, zprokit_window):
    window = zprokit_window()
    release = threading.Event()

    @main.on_msg_from_render(channel="slow")
    def slow(event, args):
        yield "first"
        release.wait(WAIT)
        yield "second"

    stream = window.render_stream_from_main(None, channel="slow", timeout=0.3)
    assert next(stream) == "first"
    with pytest.raises(Timeout):
        next(stream)
    release.set()
    assert next(stream) == "second"  # the stream stayed open: the next item still comes
    assert list(stream) == []
    assert wait_until(lambda: idle(main, window), WAIT)


def test_a_one_shot_call_to_a_streaming_handler_fails_at_once_naming_the_stream_call(main, zprokit_window):
    window = zprokit_window("w")
    main.on_msg_from_render(Counting(), channel="count")
    window.on_msg_from_main(Counting(), channel="count")
    with pytest.raises(RemoteError, match="render_stream_from_main"):
        window.render_msg_to_main(3, channel="count").result(WAIT)
    with pytest.raises(RemoteError, match="main_stream_from_render"):
        main.main_call_render("w", 3, channel="count").result(WAIT)


def test_a_stream_call_to_a_handler_that_does_not_stream_fails_naming_the_one_shot_call(main, zprokit_window):
    window = zprokit_window()
    main.on_msg_from_render(lambda event, args: args, channel="echo")
    with pytest.raises(RemoteError, match="render_msg_to_main"):
        list(window.render_stream_from_main("x", channel="echo"))
    assert wait_until(lambda: idle(main, window), WAIT)


def test_async_for_over_a_stream_and_aclose_of_an_async_producer(main, zprokit_window):
    window = zprokit_window("producer")
    closed = threading.Event()

    @window.on_msg_from_main(channel="forever")
    async def forever(event, args):
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    async def consume() -> list[int]:
        got = []
        async with main.main_stream_from_render("producer", None, channel="forever") as stream:
            async for item in stream:
                got.append(item)
                if len(got) == 25:
                    break
        return got

    assert asyncio.run(consume()) == list(range(25))
    assert closed.wait(WAIT)
    assert wait_until(lambda: idle(main, window), WAIT)


def test_a_stream_from_a_window_process_and_its_death_mid_stream():
    with Main("tcp://127.0.0.1:0") as main:
        handle = main.create_window("streamer", "_targets:streamer", env={"PYTHONPATH": TESTS_DIR})
        main.wait_for_window("streamer", timeout=20)
        stream = main.main_stream_from_render("streamer", 100, channel="count", prefetch=4)
        assert [next(stream) for _ in range(10)] == list(range(100, 110))
        os.kill(handle.pid, signal.SIGKILL)
        with pytest.raises(PeerLost):
            for _ in stream:
                pass
        handle.join(WAIT)
        assert wait_until(lambda: idle(main), WAIT)


def test_a_stream_of_small_items_keeps_its_order_at_volume(main, zprokit_window):
    window = zprokit_window()
    main.on_msg_from_render(Counting(), channel="count")
    items = Inbox()
    for item in window.render_stream_from_main(20_000, channel="count", prefetch=64):
        items.put(item)
    assert items.items == list(range(20_000))


def test_a_window_to_window_producer_stops_when_its_consumer_window_goes(main, zprokit_window):
    consumer, producer = zprokit_window("consumer"), zprokit_window("producer")
    counting = Counting()
    producer.on_render_msg_to_render(counting, channel="count")
    stream = consumer.render_stream_from_render("producer", 10**9, channel="count", prefetch=4)
    assert next(stream) == 0
    consumer.close()  # gone without closing its stream: the main tells the producer
    assert counting.closed.wait(WAIT)
    assert wait_until(lambda: idle(main, producer), WAIT)


def test_prefetch_is_bounded_below_zeromqs_queue(main, zprokit_window):
    window = zprokit_window()
    main.on_msg_from_render(Counting(), channel="count")
    for bad in (0, 501, 10**6, True, 2.5):
        with pytest.raises(ValueError, match="prefetch"):
            window.render_stream_from_main(3, channel="count", prefetch=bad)
    assert list(window.render_stream_from_main(600, channel="count", prefetch=500)) == list(range(600))


def test_a_one_shot_call_whose_handler_returns_a_generator_fails_naming_the_stream_call(main, zprokit_window):
    """Not a generator function, so only its answer tells: the generator is closed, never pickled."""
    window = zprokit_window("w")
    closed = threading.Event()

    def numbers():
        try:
            yield 1
        finally:
            closed.set()

    def gives_generator(event, args):
        stream = numbers()
        next(stream)  # started, so closing it runs its finally
        return stream

    main.on_msg_from_render(gives_generator, channel="gen")
    window.on_msg_from_main(lambda event, args: (i for i in range(3)), channel="gen")
    with pytest.raises(RemoteError, match="render_stream_from_main"):
        window.render_msg_to_main(None, channel="gen").result(WAIT)
    assert closed.wait(WAIT)
    with pytest.raises(RemoteError, match="main_stream_from_render"):
        main.main_call_render("w", None, channel="gen").result(WAIT)
    assert wait_until(lambda: idle(main, window), WAIT)
