"""Failure honesty: no half-alive node, timeouts of any size, sizes known before sending, nothing left behind.

User code that raises anything (``SystemExit`` included) is the caller's
``RemoteError`` or a counted callback failure, and the node serves on; a node
whose I/O thread fails anyway becomes closed, and says why; a call whose
caller gave up is not started later, and leaves no entry anywhere.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import threading
import time
import unicodedata

import pytest

from zprokit import Closed, Main, MessageTooLarge, NameInUse, RemoteError, Timeout, Window

from conftest import Inbox, patiently, wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def main(zprokit_main: Main) -> Main:
    return zprokit_main


# --- user code that raises anything -------------------------------------------------------


def test_sys_exit_in_pooled_handlers_is_each_callers_error_and_the_pool_lives_on(main, zprokit_window):
    window = zprokit_window()
    main.on_msg_from_render(lambda event, args: sys.exit(f"bad input {args}"), channel="exit")
    main.on_msg_from_render(lambda event, args: args * 2, channel="double")
    for i in range(20):  # more than the pool's 8 threads: each one would have died before
        with pytest.raises(RemoteError) as raised:
            window.render_msg_to_main(i, channel="exit").result(5)
        assert raised.value.remote_type == "SystemExit" and f"bad input {i}" in raised.value.remote_message
    assert [window.render_msg_to_main(i, channel="double").result(5) for i in range(20)] == [2 * i for i in range(20)]


def test_sys_exit_in_an_inline_handler_is_the_callers_error_and_the_io_thread_lives_on(main, zprokit_window):
    window = zprokit_window()
    main.on_msg_from_render(lambda event, args: sys.exit(3), channel="exit", inline=True)
    main.on_msg_from_render(lambda event, args: args + 1, channel="inc", inline=True)
    for _ in range(3):
        with pytest.raises(RemoteError, match="SystemExit"):
            window.render_msg_to_main(None, channel="exit").result(5)
    assert window.render_msg_to_main(1, channel="inc").result(5) == 2
    assert not main.closed and main.has_window(window.name)
    main.main_msg_to_render(window.name, "still here")  # no misleading WindowNotFound


def test_keyboard_interrupt_in_a_window_callback_answers_the_main(main, zprokit_window):
    window = zprokit_window()

    @window.on_msg_from_main(channel="ask")
    def ask(event, args):
        raise KeyboardInterrupt("not now")

    with pytest.raises(RemoteError) as raised:
        main.main_call_render(window.name, None, channel="ask").result(5)
    assert raised.value.remote_type == "KeyboardInterrupt"


@pytest.mark.parametrize("path", ["one-way", "broadcast"])
def test_sys_exit_in_one_way_callbacks_is_counted_and_the_lane_goes_on(main, zprokit_window, path, caplog):
    window = zprokit_window()
    got = Inbox()

    def callback(event, msg):
        if msg < 10:
            sys.exit(1)
        got.put(msg)

    if path == "one-way":
        window.on_msg_from_main(callback)
        send = lambda msg: patiently(lambda: main.main_msg_to_render(window.name, msg))  # noqa: E731
    else:
        window.on_broadcast(callback)
        send = main.broadcast
    with caplog.at_level(logging.ERROR, logger="zprokit.window"):
        for msg in range(2010):
            send(msg)
        assert got.wait_for(2000, timeout=20) == list(range(10, 2010))  # all of them, in order
    assert window.stats()["callback_errors"] == 10
    assert sum("callback" in r.getMessage() and "raised" in r.getMessage() for r in caplog.records) == 10


def test_an_async_handler_whose_await_is_cancelled_answers_at_once(main, zprokit_window):
    window = zprokit_window()

    @main.on_msg_from_render(channel="cancelled")
    async def cancelled(event, args):
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    @main.on_msg_from_render(channel="exit")
    async def exits(event, args):
        await asyncio.sleep(0)
        raise SystemExit(2)

    @main.on_msg_from_render(channel="fine")
    async def fine(event, args):
        await asyncio.sleep(0)
        return args

    started = time.monotonic()
    with pytest.raises(RemoteError, match="CancelledError"):
        window.render_msg_to_main(None, channel="cancelled", timeout=30).result()
    assert time.monotonic() - started < 10, "the caller waited out its timeout"
    with pytest.raises(RemoteError, match="SystemExit"):
        window.render_msg_to_main(None, channel="exit").result(10)
    assert window.render_msg_to_main("ok", channel="fine").result(10) == "ok"  # the asyncio thread lives


# --- a failed I/O thread closes its node ----------------------------------------------------


def _fail_io_thread(node) -> None:
    def boom() -> None:
        raise SystemExit("injected: the I/O thread fails")

    node._loop.call_soon(boom)  # not user code: a fault inside zprokit, which the loop does not survive


def test_a_main_whose_io_thread_fails_is_closed_not_half_alive(main, zprokit_window, caplog):
    window = zprokit_window()
    release = threading.Event()
    window.on_msg_from_main(lambda event, args: release.wait(30), channel="slow")
    pending = main.main_call_render(window.name, None, channel="slow", timeout=30)
    with caplog.at_level(logging.CRITICAL, logger="zprokit._loop"):
        _fail_io_thread(main)
        with pytest.raises(Closed) as raised:
            pending.result(10)
        assert wait_until(lambda: main.closed, 5)
    release.set()
    assert isinstance(main.close_reason, SystemExit)
    assert raised.value.__cause__ is main.close_reason
    for call in (lambda: main.main_msg_to_render(window.name, 1), lambda: main.broadcast(1),
                 lambda: main.main_call_render(window.name, 1)):
        with pytest.raises(Closed, match="injected"):
            call()
    assert sum(r.levelno == logging.CRITICAL for r in caplog.records) == 1, "logged once"
    assert wait_until(lambda: main._loop.ended, 5)


def test_a_window_whose_io_thread_fails_is_closed_not_half_alive(main, zprokit_window):
    window = zprokit_window()
    release = threading.Event()
    main.on_msg_from_render(lambda event, args: release.wait(30), channel="slow")
    pending = window.render_msg_to_main(None, channel="slow", timeout=30)
    _fail_io_thread(window)
    try:
        with pytest.raises(Closed) as raised:
            pending.result(10)
    finally:
        release.set()
    assert wait_until(lambda: window.closed and window.wait_closed(0), 5)
    assert isinstance(window.close_reason, SystemExit) and raised.value.__cause__ is window.close_reason
    with pytest.raises(Closed, match="injected"):
        window.render_msg_to_main(1)
    assert not window.connected


# --- timeouts and intervals of any size -----------------------------------------------------


def test_timeouts_of_any_size_work(main, zprokit_window):
    main.on_msg_from_render(lambda event, args: args, channel="echo")
    window = zprokit_window(request_timeout=math.inf)
    assert window.render_msg_to_main(1, channel="echo").result(math.inf) == 1
    assert window.render_msg_to_main(2, channel="echo", timeout=math.inf).result(None) == 2
    assert window.render_msg_to_main(3, channel="echo", timeout=1e12).result(1e12) == 3  # past 2**31 ms
    future = window.render_msg_to_main(4, channel="echo", timeout=10 * 365 * 86400.0)
    assert future.result(timeout=float(2**40)) == 4
    window.on_msg_from_main(lambda event, args: -args, channel="neg")
    assert main.main_call_render(window.name, 5, channel="neg", timeout=math.inf).result(math.inf) == -5
    assert window.stats()["pending_requests"] == 0 and main.stats()["pending_requests"] == 0


@pytest.mark.parametrize("options", [
    {"heartbeat": math.inf}, {"heartbeat": math.nan}, {"heartbeat": 0}, {"heartbeat": 1e9},
    {"liveness": 0}, {"liveness": 2.5}, {"heartbeat": 1e6, "liveness": 3},
])
def test_a_heartbeat_that_cannot_work_is_refused_at_construction(options, main):
    with pytest.raises(ValueError, match="heartbeat|liveness"):
        Main("tcp://127.0.0.1:0", **options)
    with pytest.raises(ValueError, match="heartbeat|liveness"):
        Window("w", main.endpoint, key=main.key, **options)


def test_a_call_whose_caller_gave_up_is_not_started_later(main, zprokit_window):
    """The caller's timeout reaches the callee (a CANCEL): queued calls never run, nothing is left."""
    small = Main("tcp://127.0.0.1:0", workers=1)
    try:
        window = Window("caller", small.endpoint, key=small.key)
        try:
            release, ran = threading.Event(), Inbox()

            @small.on_msg_from_render(channel="busy")
            def busy(event, args):
                ran.put(args)
                release.wait(30)

            first = window.render_msg_to_main("first", channel="busy", timeout=30)
            assert ran.get(5) == "first"
            late = [window.render_msg_to_main(i, channel="busy", timeout=0.2) for i in range(50)]
            for future in late:
                with pytest.raises(Timeout):
                    future.result(10)
            assert wait_until(lambda: small.stats()["requests_queued"] == 0, 5)
            release.set()
            first.result(10)
            assert window.render_msg_to_main("after", channel="busy", timeout=10).result(10) is None
            assert ran.items == ["first", "after"], "a call whose caller had given up was run"
            assert small.stats()["cancelled_before_start"] == 50
            assert window.stats()["pending_requests"] == 0
        finally:
            window.close()
    finally:
        small.close()


def test_timed_out_calls_leave_nothing_behind_in_caller_main_or_callee(main, zprokit_window):
    caller = zprokit_window("caller")
    callee = zprokit_window("callee", workers=2)
    release = threading.Event()
    started = Inbox()

    @callee.on_render_msg_to_render(channel="never")
    def never(event, args):  # never returns while the test runs
        started.put(args)
        release.wait(60)

    callee.on_msg_from_main(lambda event, args: release.wait(60), channel="never")
    main.on_msg_from_render(lambda event, args: release.wait(60), channel="never")
    try:
        futures = [caller.render_call_render("callee", i, channel="never", timeout=0.3) for i in range(200)]
        futures += [caller.render_msg_to_main(i, channel="never", timeout=0.3) for i in range(200)]
        futures += [main.main_call_render("callee", i, channel="never", timeout=0.3) for i in range(200)]
        for future in futures:
            with pytest.raises(Timeout):
                future.result(20)

        def counts() -> tuple[int, ...]:
            m, c, w = main.stats(), caller.stats(), callee.stats()
            return (c["pending_requests"], m["pending_routes"], m["pending_requests"], m["requests_queued"],
                    w["requests_queued"])

        assert wait_until(lambda: counts() == (0, 0, 0, 0, 0), 10), counts()
    finally:
        release.set()
    assert len(started) <= 2, f"{len(started)} calls started in a callee with 2 threads, all callers gone"


# --- sizes known before sending ---------------------------------------------------------------


def test_an_oversized_request_is_refused_at_once_naming_both_sizes(zprokit_window):
    with Main("tcp://127.0.0.1:0", max_payload=1 << 20) as main:
        main.on_msg_from_render(lambda event, args: len(args), channel="len")
        with Window("w", main.endpoint, key=main.key) as window:
            started = time.monotonic()
            with pytest.raises(MessageTooLarge) as raised:
                window.render_msg_to_main(b"x" * (4 << 20), channel="len", timeout=30)
            assert time.monotonic() - started < 5
            assert raised.value.limit == 1 << 20 and raised.value.size > 4 << 20
            assert str(1 << 20) in str(raised.value) and str(raised.value.size) in str(raised.value)
            assert isinstance(raised.value, ValueError)
            assert window.stats()["pending_requests"] == 0 and main.stats()["rejected"]["oversized"] == 0
            assert window.render_msg_to_main(b"x" * 1000, channel="len").result(5) == 1000
            with pytest.raises(MessageTooLarge):
                window.render_msg_to_render("w", b"x" * (2 << 20))


def test_the_main_respects_a_windows_announced_limit(main, zprokit_window):
    small = zprokit_window("small", max_payload=64 << 10)
    other = zprokit_window("other")
    small.on_msg_from_main(lambda event, args: len(args), channel="len")
    other.on_msg_from_main(lambda event, args: b"y" * (128 << 10), channel="big")
    with pytest.raises(MessageTooLarge) as raised:
        main.main_call_render("small", b"x" * (100 << 10), channel="len")
    assert raised.value.peer == "small" and raised.value.limit == 64 << 10
    with pytest.raises(MessageTooLarge):
        main.main_msg_to_render("small", b"x" * (100 << 10))
    with pytest.raises(MessageTooLarge):  # routed: refused by the main, told to the sender
        other.render_msg_to_render("small", b"x" * (100 << 10)).result(5)
    assert main.main_call_render("small", b"x" * 100, channel="len").result(5) == 100
    assert main.stats()["pending_requests"] == 0 and main.stats()["pending_routes"] == 0
    # A reply too large for its receiver is the handler's error, told to the caller at once.
    main.on_msg_from_render(lambda event, args: b"z" * (128 << 10), channel="big")
    with pytest.raises(RemoteError, match="MessageTooLarge"):
        small.render_msg_to_main(None, channel="big").result(5)


# --- names and channels ----------------------------------------------------------------------


def test_a_bad_channel_fails_at_once_and_leaves_nothing_pending(main, zprokit_window):
    window = zprokit_window()
    huge = "c" * 70_000
    with pytest.raises(ValueError, match="65535 bytes"):
        window.render_msg_to_main(1, channel=huge)
    with pytest.raises(ValueError, match="65535 bytes"):
        main.main_call_render(window.name, 1, channel=huge)
    with pytest.raises(ValueError, match="65535 bytes"):
        main.broadcast(1, topic=huge)
    with pytest.raises(TypeError):
        window.render_msg_to_main(1, channel=b"bytes")
    assert window.stats()["pending_requests"] == 0 and main.stats()["pending_requests"] == 0


def test_window_names_are_compared_in_one_unicode_form(main, zprokit_window):
    nfd, nfc = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    assert nfd != nfc
    window = zprokit_window(nfd)
    assert window.name == nfc
    assert main.has_window(nfd) and main.has_window(nfc) and main.get_window(nfd).name == nfc
    got = Inbox()
    window.on_msg_from_main(lambda event, msg: got.put(msg))
    main.main_msg_to_render(nfd, "by NFD")
    assert got.get(5) == "by NFD"
    with pytest.raises(NameInUse):
        zprokit_window(nfc)


def test_a_name_too_long_for_the_routing_id_fails_at_once(main):
    started = time.monotonic()
    for name in ("n" * 223, "é" * 112, "x" * 10_000):
        with pytest.raises(ValueError) as raised:
            Window(name, main.endpoint, key=main.key, timeout=30)
        assert len(str(raised.value)) < 200, "the error quotes the whole name"
    assert time.monotonic() - started < 5
    with Window("n" * 222, main.endpoint, key=main.key) as window:
        assert main.has_window(window.name)


# --- from the review: answers reach only their asker; limits the OS sets ------------------


def test_an_answer_never_reaches_another_incarnation_of_its_window(main):
    """A window that restarts under the same name numbers its calls afresh: a handler's answer to
    the old incarnation must not settle the new one's call with the same number."""
    release_first, release_second, started = threading.Event(), threading.Event(), threading.Event()
    main.on_msg_from_render(lambda event, args: started.set() or (release_first.wait(10) and "for the first"),
                            channel="first")
    main.on_msg_from_render(lambda event, args: release_second.wait(10) and "for the second", channel="second")
    first = Window("w", main.endpoint, key=main.key)
    stale = first.render_msg_to_main(None, channel="first", timeout=30)
    assert started.wait(5)  # running (not merely queued: a queued call is cancelled when its window leaves)
    first.close()
    with pytest.raises(Closed):
        stale.result(5)
    with Window("w", main.endpoint, key=main.key) as second:
        mine = second.render_msg_to_main(None, channel="second", timeout=30)  # the same msg_id as the stale call
        release_first.set()
        assert wait_until(lambda: main.stats()["late_answers"] >= 1, 5)
        assert not mine.done(), f"the new window got the old one's answer: {mine.result(0)!r}"
        release_second.set()
        assert mine.result(10) == "for the second"


@pytest.mark.parametrize("heartbeat, liveness", [(0.01, 128), (0.05, 200), (32768.0, 1)])
def test_heartbeats_past_the_kernels_keepalive_limits_still_let_windows_join(heartbeat, liveness):
    with Main("tcp://127.0.0.1:0", heartbeat=heartbeat, liveness=liveness) as main:
        with Window("w", main.endpoint, key=main.key, heartbeat=heartbeat, liveness=liveness, timeout=10):
            assert main.has_window("w")


def test_a_closed_main_lists_no_windows_and_waits_for_none(main, zprokit_window):
    window = zprokit_window()
    assert main.has_window(window.name)
    main.close()
    assert not main.has_window(window.name) and main.get_all_windows() == [] and main.stats()["windows"] == 0
    with pytest.raises(Closed):
        main.wait_for_window(window.name, timeout=5)


def test_a_routed_reply_over_the_callers_limit_is_told_at_once(main, zprokit_window):
    small = zprokit_window("small", max_payload=64 << 10)
    big = zprokit_window("big")
    big.on_render_msg_to_render(lambda event, args: b"y" * (128 << 10), channel="big")
    started = time.monotonic()
    with pytest.raises(MessageTooLarge):
        small.render_call_render("big", None, channel="big", timeout=30).result(30)
    assert time.monotonic() - started < 10
    assert main.stats()["pending_routes"] == 0
