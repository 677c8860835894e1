"""The public API (the README's tour), with Main and Windows in this process.

Each test names the promise it checks. Nodes talk over real TCP on
loopback (``tcp://127.0.0.1:0``); real processes are in ``test_processes.py``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import socket
import threading
import time

import pytest

import zprokit
from zprokit import (
    AuthenticationError, Closed, Main, NameInUse, NoHandler, PeerLost, ProtocolError, RemoteError,
    Timeout, Window, WindowInfo, WindowNotFound, ZprokitError,
)

from conftest import Inbox, wait_until

pytestmark = pytest.mark.timeout(30)

WAIT = 5.0  # how long a test waits for something that should come at once


@pytest.fixture(autouse=True)
def _no_key_in_environment(monkeypatch):
    # A key or endpoint in the developer's environment must not change what these tests see.
    for var in ("ZPROKIT_KEY", "ZPROKIT_KEY_HEX", "ZPROKIT_ENDPOINT", "ZPROKIT_NAME"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def main(zprokit_main):
    return zprokit_main


@pytest.fixture
def window(zprokit_window):
    return zprokit_window


# ---------------------------------------------------------------------------- main: handlers


def test_init_binds_a_free_port_and_reports_it(main):
    assert main.endpoint.startswith("tcp://127.0.0.1:")
    assert int(main.endpoint.rsplit(":", 1)[1]) > 0


def test_on_msg_from_render_as_a_plain_call_returns_the_handler(main, window):
    def add(event, args):
        return args[0] + args[1]

    assert main.on_msg_from_render(add, channel="add") is add
    w = window()
    assert w.render_msg_to_main((2, 3), channel="add").result(WAIT) == 5


def test_on_msg_from_render_plain_call_default_channel(main, window):
    def upper(event, args):
        return (event.channel, args.upper())

    main.on_msg_from_render(upper)
    w = window()
    assert w.render_msg_to_main("hi").result(WAIT) == ("default", "HI")


def test_on_msg_from_render_bare_decorator(main, window):
    @main.on_msg_from_render
    def echo(event, args):
        return ("echo", args)

    assert callable(echo) and echo(None, 1) == ("echo", 1)  # the decorator returns the function itself
    assert window().render_msg_to_main(7).result(WAIT) == ("echo", 7)


def test_on_msg_from_render_decorator_with_channel_keyword(main, window):
    @main.on_msg_from_render(channel="sum")
    def total(event, args):
        return sum(args)

    assert total(None, [1, 2]) == 3
    w = window()
    assert w.render_msg_to_main([1, 2, 3], channel="sum").result(WAIT) == 6
    with pytest.raises(NoHandler):  # and not on the default channel
        w.render_msg_to_main([1], timeout=60).result(WAIT)


def test_on_msg_from_render_decorator_with_positional_channel(main, window):
    @main.on_msg_from_render("product")
    def product(event, args):
        return math.prod(args)

    assert product(None, [2, 5]) == 10
    assert window().render_msg_to_main([2, 3, 4], channel="product").result(WAIT) == 24


def test_handler_event_names_sender_and_channel(main, window):
    main.on_msg_from_render(lambda event, args: (event.sender, event.channel), channel="who")
    w = window("alice")
    assert w.render_msg_to_main(None, channel="who").result(WAIT) == ("alice", "who")


def test_one_handler_per_channel_unless_replace(main, window):
    main.on_msg_from_render(lambda e, a: "first", channel="c")
    with pytest.raises(ValueError, match="c"):
        main.on_msg_from_render(lambda e, a: "second", channel="c")
    w = window()
    assert w.render_msg_to_main(None, channel="c").result(WAIT) == "first"
    main.on_msg_from_render(lambda e, a: "third", channel="c", replace=True)
    assert w.render_msg_to_main(None, channel="c").result(WAIT) == "third"


def test_off_msg_from_render_removes_the_handler(main, window):
    main.on_msg_from_render(lambda e, a: "here", channel="c")
    w = window()
    assert w.render_msg_to_main(None, channel="c").result(WAIT) == "here"
    assert main.off_msg_from_render("c") is True
    with pytest.raises(NoHandler):
        w.render_msg_to_main(None, channel="c", timeout=60).result(WAIT)
    assert main.off_msg_from_render("c") is False
    main.on_msg_from_render(lambda e, a: "again", channel="c")  # the channel is free again
    assert w.render_msg_to_main(None, channel="c").result(WAIT) == "again"


def test_async_def_handler_is_awaited(main, window):
    @main.on_msg_from_render(channel="async")
    async def double(event, args):
        await asyncio.sleep(0.01)
        return args * 2

    assert window().render_msg_to_main(21, channel="async").result(WAIT) == 42


def test_async_def_handler_exception_is_a_remote_error(main, window):
    @main.on_msg_from_render(channel="async")
    async def failing_coroutine(event, args):
        await asyncio.sleep(0)
        raise KeyError(args)

    with pytest.raises(RemoteError) as info:
        window().render_msg_to_main("k", channel="async").result(WAIT)
    assert info.value.remote_type == "KeyError"
    assert "failing_coroutine" in info.value.remote_traceback


def test_handler_exception_becomes_remote_error_and_main_keeps_serving(main, window):
    @main.on_msg_from_render(channel="explode")
    def exploding_handler(event, args):
        raise ValueError(f"bad input {args}")

    main.on_msg_from_render(lambda e, a: a + 1, channel="inc")
    w = window()
    with pytest.raises(RemoteError) as info:
        w.render_msg_to_main(7, channel="explode").result(WAIT)
    err = info.value
    assert isinstance(err, ZprokitError)
    assert err.remote_type == "ValueError"
    assert err.remote_message == "bad input 7"
    assert err.origin == "main"
    assert "exploding_handler" in err.remote_traceback
    assert "Traceback" in err.remote_traceback
    assert "bad input 7" in str(err)
    # main keeps serving, on another channel and on the one that failed
    assert w.render_msg_to_main(1, channel="inc").result(WAIT) == 2
    with pytest.raises(RemoteError):
        w.render_msg_to_main(8, channel="explode").result(WAIT)
    assert w.render_msg_to_main(2, channel="inc").result(WAIT) == 3
    assert main.stats()["requests_served"] >= 4


def test_calls_sent_back_to_back_run_side_by_side_in_the_main_and_in_a_window(main, window):
    """A pool starts a thread for each call that finds none free, however quickly the calls come:
    a second call never waits behind a first that blocks, while the pool has room."""
    both = threading.Barrier(2, timeout=WAIT)  # passes only once two handlers run at once

    def meet(event, args):
        both.wait()
        return args

    main.on_msg_from_render(meet, channel="meet")
    w = window()
    futures = [w.render_msg_to_main(i, channel="meet") for i in range(2)]
    assert [f.result(WAIT) for f in futures] == [0, 1]
    both.reset()
    w.on_msg_from_main(meet, channel="meet")
    futures = [main.main_call_render(w.name, i, channel="meet") for i in range(2)]
    assert [f.result(WAIT) for f in futures] == [0, 1]


def test_unknown_channel_fails_at_once_with_no_handler(main, window):
    w = window()
    started = time.monotonic()
    with pytest.raises(NoHandler) as info:
        # A 60 s request timeout, a 5 s wait: only an immediate NoHandler passes.
        w.render_msg_to_main("x", channel="nobody-home", timeout=60).result(WAIT)
    assert time.monotonic() - started < WAIT
    assert info.value.channel == "nobody-home"
    assert "nobody-home" in str(info.value)


# ---------------------------------------------------------------------------- main -> window


def test_main_msg_to_render_reaches_on_msg_from_main(main, window):
    w = window("w")
    inbox = Inbox()
    w.on_msg_from_main(lambda event, args: inbox.put((event.sender, event.channel, args)), channel="tell")
    assert main.main_msg_to_render("w", {"n": 1}, channel="tell") is None
    assert inbox.get(WAIT) == ("main", "tell", {"n": 1})


def test_main_msg_to_render_default_channel_and_every_callback(main, window):
    w = window("w")
    inbox = Inbox()
    w.on_msg_from_main(lambda e, a: inbox.put(("one", a)))
    w.on_msg_from_main(lambda e, a: inbox.put(("two", a)))
    main.main_msg_to_render("w", "hello")
    assert sorted(inbox.wait_for(2, WAIT)) == [("one", "hello"), ("two", "hello")]


def test_main_msg_to_render_unknown_window_raises_at_once(main):
    with pytest.raises(WindowNotFound) as info:
        main.main_msg_to_render("ghost", "boo")
    assert info.value.name == "ghost"
    with pytest.raises(WindowNotFound):
        main.main_call_render("ghost", "boo")


def test_on_msg_from_main_decorator_forms(main, window):
    w = window("w")
    inbox = Inbox()

    @w.on_msg_from_main
    def bare(event, args):
        inbox.put(("bare", event.channel, args))

    @w.on_msg_from_main(channel="kw")
    def keyword(event, args):
        inbox.put(("kw", event.channel, args))

    @w.on_msg_from_main("pos")
    def positional(event, args):
        inbox.put(("pos", event.channel, args))

    assert all(callable(f) for f in (bare, keyword, positional))
    main.main_msg_to_render("w", 1)
    main.main_msg_to_render("w", 2, channel="kw")
    main.main_msg_to_render("w", 3, channel="pos")
    assert sorted(inbox.wait_for(3, WAIT)) == [("bare", "default", 1), ("kw", "kw", 2), ("pos", "pos", 3)]


def test_main_call_render_answered_by_first_callback(main, window):
    w = window("w")
    w.on_msg_from_main(lambda e, a: ("first", a), channel="q")
    w.on_msg_from_main(lambda e, a: ("second", a), channel="q")
    assert main.main_call_render("w", 5, channel="q").result(WAIT) == ("first", 5)


def test_main_call_render_default_channel(main, window):
    w = window("w")
    w.on_msg_from_main(lambda e, a: (e.sender, e.channel, a * 3))
    assert main.main_call_render("w", 2).result(WAIT) == ("main", "default", 6)


def test_main_call_render_without_callback_is_no_handler(main, window):
    window("w")
    with pytest.raises(NoHandler) as info:
        main.main_call_render("w", 1, channel="none", timeout=60).result(WAIT)
    assert info.value.channel == "none"
    assert "w" in str(info.value)


def test_main_call_render_callback_exception_is_remote_error(main, window):
    w = window("w")

    @w.on_msg_from_main(channel="q")
    def failing_window_callback(event, args):
        raise RuntimeError("window says no")

    with pytest.raises(RemoteError) as info:
        main.main_call_render("w", None, channel="q").result(WAIT)
    assert info.value.remote_type == "RuntimeError"
    assert info.value.remote_message == "window says no"
    assert info.value.origin == "w"
    assert "failing_window_callback" in info.value.remote_traceback
    # the window keeps answering
    w.on_msg_from_main(lambda e, a: "fine", channel="ok")
    assert main.main_call_render("w", None, channel="ok").result(WAIT) == "fine"


def test_async_def_window_callback_answers_a_call(main, window):
    w = window("w")

    @w.on_msg_from_main(channel="q")
    async def later(event, args):
        await asyncio.sleep(0.01)
        return args + 1

    assert main.main_call_render("w", 1, channel="q").result(WAIT) == 2


def test_async_def_window_callbacks_for_messages_and_broadcasts(main, window):
    w = window("w")
    inbox = Inbox()

    @w.on_msg_from_main(channel="m")
    async def on_message(event, args):
        await asyncio.sleep(0)
        inbox.put(("message", args))

    @w.on_broadcast
    async def on_cast(event, args):
        await asyncio.sleep(0)
        inbox.put(("broadcast", args))

    main.main_msg_to_render("w", 1, channel="m")
    main.broadcast(2)
    assert sorted(inbox.wait_for(2, WAIT)) == [("broadcast", 2), ("message", 1)]


def test_one_way_callback_exception_is_logged_and_does_not_stop_delivery(main, window, caplog):
    w = window("w")
    inbox = Inbox()

    @w.on_msg_from_main(channel="m")
    def clumsy_callback(event, args):
        raise RuntimeError(f"dropped {args}")

    w.on_msg_from_main(lambda e, a: inbox.put(a), channel="m")
    main.main_msg_to_render("w", 1, channel="m")
    main.main_msg_to_render("w", 2, channel="m")
    assert inbox.wait_for(2, WAIT) == [1, 2]
    assert wait_until(lambda: sum("dropped" in str(r.exc_info and r.exc_info[1]) for r in caplog.records) == 2, WAIT)


def test_off_msg_from_main_unsubscribes(main, window):
    w = window("w")
    removed, kept = Inbox(), Inbox()

    def gone(event, args):
        removed.put(args)

    w.on_msg_from_main(gone, channel="c")
    w.on_msg_from_main(lambda e, a: kept.put(a), channel="c")
    main.main_msg_to_render("w", 0, channel="c")
    assert kept.get(WAIT) == 0 and removed.get(WAIT) == 0
    assert w.off_msg_from_main(gone) is True
    assert w.off_msg_from_main(gone) is False
    main.main_msg_to_render("w", 1, channel="c")
    main.main_msg_to_render("w", 2, channel="c")
    # Messages on one channel are delivered one after another: once 2 arrived, 1 was fully handled.
    assert kept.wait_for(3, WAIT) == [0, 1, 2]
    assert removed.items == [0]


def test_off_msg_from_main_last_callback_makes_calls_no_handler(main, window):
    w = window("w")
    cb = w.on_msg_from_main(lambda e, a: "yes", channel="q")
    assert main.main_call_render("w", None, channel="q").result(WAIT) == "yes"
    assert w.off_msg_from_main(cb, channel="q") is True
    with pytest.raises(NoHandler):
        main.main_call_render("w", None, channel="q", timeout=60).result(WAIT)


def test_one_way_messages_on_one_channel_arrive_in_order(main, window):
    w = window("w")
    inbox = Inbox()

    @w.on_msg_from_main(channel="seq")
    def uneven(event, i):
        if i % 2 == 0:
            time.sleep(0.001)  # uneven work: a pool without per-channel order would reorder these
        inbox.put(i)

    for i in range(200):
        main.main_msg_to_render("w", i, channel="seq")
    assert inbox.wait_for(200, 10) == list(range(200))


def test_unhandled_one_way_message_is_counted(main, window):
    w = window("w")
    assert w.stats()["unhandled"] == 0
    main.main_msg_to_render("w", "lost?", channel="nobody")
    assert wait_until(lambda: w.stats()["unhandled"] == 1, WAIT)


# ---------------------------------------------------------------------------- broadcasts


def test_broadcast_topics_match_by_prefix(main, window):
    w = window("w")
    everything, news = Inbox(), Inbox()
    w.on_broadcast(lambda e, m: everything.put((e.topic, m)))
    w.on_broadcast(lambda e, m: news.put((e.sender, e.topic, m)), topic="news")
    main.broadcast("rain", topic="weather")
    main.broadcast("goal", topic="news.sport")
    main.broadcast("all", topic="")
    main.broadcast("end", topic="zz")
    assert everything.wait_for(4, WAIT) == [("weather", "rain"), ("news.sport", "goal"), ("", "all"), ("zz", "end")]
    # Broadcasts reach a window's callbacks in order: by the time "end" arrived, the rest was handled.
    assert news.items == [("main", "news.sport", "goal")]


def test_on_broadcast_decorator_forms(main, window):
    w = window("w")
    inbox = Inbox()

    @w.on_broadcast
    def everything(event, msg):
        inbox.put(("all", msg))

    @w.on_broadcast(topic="news")
    def keyword(event, msg):
        inbox.put(("kw", msg))

    @w.on_broadcast("news")  # a positional string is the topic, as it is the channel elsewhere
    def positional(event, msg):
        inbox.put(("pos", msg))

    assert all(callable(f) for f in (everything, keyword, positional))
    main.broadcast("rain", topic="weather")
    main.broadcast("goal", topic="news.sport")
    main.broadcast("end", topic="zz")
    assert inbox.wait_for(5, WAIT) == [("all", "rain"), ("all", "goal"), ("kw", "goal"), ("pos", "goal"), ("all", "end")]


def test_broadcast_reaches_every_window(main, window):
    inboxes = []
    for name in ("a", "b", "c"):
        inbox = Inbox()
        window(name).on_broadcast(lambda e, m, inbox=inbox: inbox.put(m))
        inboxes.append(inbox)
    main.broadcast({"x": 1})
    for inbox in inboxes:
        assert inbox.get(WAIT) == {"x": 1}


def test_off_broadcast_unsubscribes(main, window):
    w = window("w")
    removed, kept = Inbox(), Inbox()
    cb = w.on_broadcast(lambda e, m: removed.put(m), topic="t")
    w.on_broadcast(lambda e, m: kept.put(m))
    main.broadcast(1, topic="t")
    assert removed.get(WAIT) == 1 and kept.get(WAIT) == 1
    assert w.off_broadcast(cb) is True
    main.broadcast(2, topic="t")
    main.broadcast(3, topic="t")
    assert kept.wait_for(3, WAIT) == [1, 2, 3]
    assert removed.items == [1]


def test_broadcast_right_after_connect_is_received(main, window):
    # init_expose_in_main_world returns only when the subscription is live.
    for i in range(5):
        w = window(f"late-{i}")
        inbox = Inbox()
        w.on_broadcast(lambda e, m: inbox.put(m), topic=f"hello-{i}")
        main.broadcast(i, topic=f"hello-{i}")
        assert inbox.get(WAIT) == i


# ---------------------------------------------------------------------------- window <-> window


def test_render_msg_to_render_resolves_to_none_and_names_the_sender(main, window):
    a, b = window("a"), window("b")
    inbox = Inbox()
    b.on_render_msg_to_render(lambda e, m: inbox.put((e.sender, e.channel, m)), channel="note")
    assert a.render_msg_to_render("b", "hi b", channel="note").result(WAIT) is None
    assert inbox.get(WAIT) == ("a", "note", "hi b")


def test_render_msg_to_render_default_channel_and_decorators(main, window):
    a, b = window("a"), window("b")
    inbox = Inbox()

    @b.on_render_msg_to_render
    def got(event, msg):
        inbox.put((event.sender, event.channel, msg))

    assert a.render_msg_to_render("b", 1).result(WAIT) is None
    assert inbox.get(WAIT) == ("a", "default", 1)


def test_render_msg_to_render_unknown_target_fails_through_the_future(main, window):
    a = window("a")
    future = a.render_msg_to_render("nobody", "hello?", timeout=60)
    with pytest.raises(WindowNotFound) as info:
        future.result(WAIT)
    assert info.value.name == "nobody"


def test_off_render_msg_to_render_unsubscribes(main, window):
    a, b = window("a"), window("b")
    removed, kept = Inbox(), Inbox()
    cb = b.on_render_msg_to_render(lambda e, m: removed.put(m))
    b.on_render_msg_to_render(lambda e, m: kept.put(m))
    a.render_msg_to_render("b", 1).result(WAIT)
    assert removed.get(WAIT) == 1 and kept.get(WAIT) == 1
    assert b.off_render_msg_to_render(cb) is True
    a.render_msg_to_render("b", 2).result(WAIT)
    a.render_msg_to_render("b", 3).result(WAIT)
    assert kept.wait_for(3, WAIT) == [1, 2, 3]
    assert removed.items == [1]


def test_render_call_render_returns_the_callback_value(main, window):
    a, b = window("a"), window("b")
    b.on_render_msg_to_render(lambda e, m: (e.sender, sum(m)), channel="add")
    assert a.render_call_render("b", [1, 2, 3], channel="add").result(WAIT) == ("a", 6)


def test_render_call_render_error_paths(main, window):
    a, b = window("a"), window("b")

    @b.on_render_msg_to_render(channel="bad")
    def broken_peer_callback(event, msg):
        raise ZeroDivisionError("nope")

    with pytest.raises(RemoteError) as info:
        a.render_call_render("b", None, channel="bad").result(WAIT)
    assert info.value.origin == "b"
    assert info.value.remote_type == "ZeroDivisionError"
    assert "broken_peer_callback" in info.value.remote_traceback
    with pytest.raises(NoHandler):
        a.render_call_render("b", None, channel="none", timeout=60).result(WAIT)
    with pytest.raises(WindowNotFound):
        a.render_call_render("ghost", None, timeout=60).result(WAIT)


def test_window_to_window_messages_do_not_reach_on_msg_from_main(main, window):
    a, b = window("a"), window("b")
    from_main, from_render = Inbox(), Inbox()
    b.on_msg_from_main(lambda e, m: from_main.put(m))
    b.on_render_msg_to_render(lambda e, m: from_render.put(m))
    a.render_msg_to_render("b", "peer").result(WAIT)
    main.main_msg_to_render("b", "boss")
    assert from_render.get(WAIT) == "peer"
    assert from_main.get(WAIT) == "boss"
    assert from_main.items == ["boss"] and from_render.items == ["peer"]


# ---------------------------------------------------------------------------- registry and presence


def test_registry_and_window_info(main, window):
    assert main.get_all_windows() == [] and main.get_window("a") is None and not main.has_window("a")
    before = time.time()
    window("a")
    window("b")
    after = time.time()
    assert main.has_window("a") and main.has_window("b") and not main.has_window("c")
    info = main.get_window("a")
    assert isinstance(info, WindowInfo)
    assert info.name == "a"
    assert info.host == socket.gethostname()
    assert info.pid == os.getpid()
    assert before <= info.connected_since <= after
    assert [i.name for i in main.get_all_windows()] == ["a", "b"]
    assert main.get_window("nope") is None


def test_window_leaves_registry_when_it_closes(main, window):
    w = window("a")
    assert main.has_window("a")
    w.close()
    assert wait_until(lambda: not main.has_window("a"), WAIT)
    assert main.get_window("a") is None and main.get_all_windows() == []


def test_presence_callbacks(main, window):
    connected, disconnected = Inbox(), Inbox()
    assert main.on_window_connected(connected.put) == connected.put
    assert main.on_window_disconnected(disconnected.put) == disconnected.put
    w = window("p")
    info = connected.get(WAIT)
    assert isinstance(info, WindowInfo) and info.name == "p" and info.pid == os.getpid()
    w.close()
    gone = disconnected.get(WAIT)
    assert isinstance(gone, WindowInfo) and gone.name == "p"


def test_destroy_window_closes_an_in_process_window(main, window):
    w = window("doomed")
    gone = Inbox()
    main.on_window_disconnected(gone.put)
    assert main.destroy_window("doomed") is True
    assert w.wait_closed(WAIT)
    assert w.closed
    assert gone.get(WAIT).name == "doomed"
    assert not main.has_window("doomed")
    assert main.destroy_window("doomed") is False
    with pytest.raises(Closed):
        w.render_msg_to_main(None)


def test_stats(main, window):
    stats = main.stats()
    assert {"messages_in", "messages_out", "requests_served", "windows", "rejected"} <= set(stats)
    assert isinstance(stats["rejected"], dict)
    assert stats["windows"] == 0
    main.on_msg_from_render(lambda e, a: a)
    w = window()
    w.render_msg_to_main(1).result(WAIT)
    after = main.stats()
    assert after["windows"] == 1
    assert after["requests_served"] == stats["requests_served"] + 1
    assert after["messages_in"] > stats["messages_in"]
    assert after["messages_out"] > stats["messages_out"]
    wstats = w.stats()
    assert wstats["messages_in"] >= 1 and wstats["messages_out"] >= 1


# ---------------------------------------------------------------------------- futures and timeouts


def test_future_result_and_await(main, window):
    main.on_msg_from_render(lambda e, a: a * 2, channel="double")
    w = window()
    future = w.render_msg_to_main(4, channel="double")
    assert isinstance(future, zprokit.ReplyFuture)
    assert future.result(WAIT) == 8

    async def use_await():
        value = await w.render_msg_to_main(5, channel="double")
        both = await asyncio.gather(w.render_msg_to_main(1, channel="double"), w.render_msg_to_main(2, channel="double"))
        try:
            await w.render_msg_to_main(0, channel="missing", timeout=60)
        except NoHandler as e:
            missing = e.channel
        return value, both, missing

    assert asyncio.run(use_await()) == (10, [2, 4], "missing")


@pytest.fixture
def slow_main(main):
    """A main with a handler on ``slow`` that blocks until the test releases it."""
    release = threading.Event()
    entered = threading.Event()

    @main.on_msg_from_render(channel="slow")
    def slow(event, args):
        entered.set()
        release.wait(20)
        return "slow done"

    main.release, main.entered = release, entered
    try:
        yield main
    finally:
        release.set()


def test_timeout_when_handler_is_slower_than_the_request(slow_main, window):
    w = window()
    started = time.monotonic()
    with pytest.raises(Timeout) as info:
        w.render_msg_to_main(None, channel="slow", timeout=0.3).result(WAIT)
    assert time.monotonic() - started < WAIT
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, ZprokitError)


def test_timeout_through_await(slow_main, window):
    w = window()

    async def go():
        with pytest.raises(Timeout):
            await w.render_msg_to_main(None, channel="slow", timeout=0.3)

    asyncio.run(go())


def test_main_call_render_timeout(main, window):
    w = window("w")
    release = threading.Event()
    w.on_msg_from_main(lambda e, a: release.wait(20), channel="slow")
    try:
        with pytest.raises(Timeout):
            main.main_call_render("w", None, channel="slow", timeout=0.3).result(WAIT)
    finally:
        release.set()


def test_short_result_wait_raises_timeout_and_leaves_the_request_running(slow_main, window):
    w = window()
    future = w.render_msg_to_main(None, channel="slow", timeout=20)
    assert slow_main.entered.wait(WAIT)
    with pytest.raises(Timeout):
        future.result(0.05)
    assert not future.done()
    slow_main.release.set()
    assert future.result(WAIT) == "slow done"


def test_default_timeouts_are_finite():
    for cls, param in ((Main, "request_timeout"), (Window, "timeout"), (Window, "request_timeout")):
        default = inspect.signature(cls).parameters[param].default
        assert isinstance(default, (int, float)) and math.isfinite(default) and default > 0, (cls, param)


def test_window_default_request_timeout_applies(slow_main, window):
    w = window(request_timeout=0.3)
    with pytest.raises(Timeout):
        w.render_msg_to_main(None, channel="slow").result(WAIT)  # no per-call timeout given


def test_main_default_request_timeout_applies():
    with Main("tcp://127.0.0.1:0", request_timeout=0.3) as main:
        release = threading.Event()
        with Window("w", main.endpoint, key=main.key) as w:
            w.on_msg_from_main(lambda e, a: release.wait(20), channel="slow")
            try:
                with pytest.raises(Timeout):
                    main.main_call_render("w", None, channel="slow").result(WAIT)
            finally:
                release.set()


def test_slow_handler_does_not_stall_another_request(slow_main, window):
    slow_main.on_msg_from_render(lambda e, a: "fast", channel="fast")
    w = window()
    slow = w.render_msg_to_main(None, channel="slow", timeout=20)
    assert slow_main.entered.wait(WAIT)
    assert w.render_msg_to_main(None, channel="fast").result(WAIT) == "fast"
    other = window()  # and another window is still served, and can still connect
    assert other.render_msg_to_main(None, channel="fast").result(WAIT) == "fast"
    assert not slow.done()
    slow_main.release.set()
    assert slow.result(WAIT) == "slow done"


def test_main_handler_may_call_a_window_and_wait(main, window):
    @main.on_msg_from_render(channel="relay")
    def relay(event, args):
        return ("relayed", main.main_call_render("b", args, channel="echo").result(WAIT))

    a, b = window("a"), window("b")
    b.on_msg_from_main(lambda e, m: ("b saw", m), channel="echo")
    assert a.render_msg_to_main("x", channel="relay").result(WAIT * 2) == ("relayed", ("b saw", "x"))


def test_error_of_a_handler_nested_request_is_the_handlers_remote_error(main, window):
    # The caller's channel has a handler: the NoHandler the handler met is its error, not the caller's.
    @main.on_msg_from_render(channel="relay")
    def relay_to_b(event, args):
        return main.main_call_render("b", args, channel=args, timeout=60).result(WAIT)

    a, b = window("a"), window("b")

    @b.on_msg_from_main(channel="fails")
    def b_fails(event, args):
        raise LookupError("from b")

    with pytest.raises(RemoteError) as info:
        a.render_msg_to_main("missing", channel="relay").result(WAIT * 2)
    assert info.value.remote_type == "zprokit.errors.NoHandler"
    assert info.value.origin == "main"
    assert "relay_to_b" in info.value.remote_traceback
    # A RemoteError passed on through a handler still says where it was raised.
    with pytest.raises(RemoteError) as info:
        a.render_msg_to_main("fails", channel="relay").result(WAIT * 2)
    assert (info.value.remote_type, info.value.origin) == ("LookupError", "b")
    assert "b_fails" in info.value.remote_traceback


def test_window_callback_may_call_main_and_wait(main, window):
    main.on_msg_from_render(lambda e, a: a * 2, channel="double")
    w = window("w")
    inbox = Inbox()

    @w.on_msg_from_main(channel="ask")
    def ask(event, args):
        return w.render_msg_to_main(args, channel="double").result(WAIT)

    @w.on_msg_from_main(channel="tell")
    def tell(event, args):  # a one-way callback may wait too
        inbox.put(w.render_msg_to_main(args, channel="double").result(WAIT))

    assert main.main_call_render("w", 21, channel="ask").result(WAIT * 2) == 42
    main.main_msg_to_render("w", 5, channel="tell")
    assert inbox.get(WAIT) == 10


def test_window_callback_may_call_another_window_and_wait(main, window):
    a, b = window("a"), window("b")
    b.on_render_msg_to_render(lambda e, m: m + 1, channel="inc")
    a.on_msg_from_main(lambda e, m: a.render_call_render("b", m, channel="inc").result(WAIT), channel="via-b")
    assert main.main_call_render("a", 1, channel="via-b").result(WAIT * 2) == 2


# ---------------------------------------------------------------------------- lifecycle


def test_close_is_idempotent_and_closed_nodes_raise_closed():
    main = Main("tcp://127.0.0.1:0")
    w = Window("w", main.endpoint, key=main.key)
    w.close()
    w.close()
    assert w.closed
    for call in (
        lambda: w.render_msg_to_main(1),
        lambda: w.render_msg_to_render("x", 1),
        lambda: w.render_call_render("x", 1),
    ):
        with pytest.raises(Closed):
            call()
    main.close()
    main.close()
    assert main.closed
    for call in (
        lambda: main.main_msg_to_render("w", 1),
        lambda: main.main_call_render("w", 1),
        lambda: main.broadcast(1),
        lambda: main.destroy_window("w"),
    ):
        with pytest.raises(Closed):
            call()
    assert issubclass(Closed, ZprokitError)


def test_context_managers_close():
    with Main("tcp://127.0.0.1:0") as main:
        with Window("w", main.endpoint, key=main.key) as w:
            assert main.has_window("w") and w.connected
        assert w.closed
    assert main.closed


def test_pending_request_fails_with_closed_when_its_window_closes(slow_main, window):
    w = window()
    future = w.render_msg_to_main(None, channel="slow", timeout=20)
    assert slow_main.entered.wait(WAIT)
    w.close()
    with pytest.raises(Closed):
        future.result(WAIT)


def test_pending_call_fails_with_closed_when_main_closes():
    main = Main("tcp://127.0.0.1:0")
    release = threading.Event()
    w = Window("w", main.endpoint, key=main.key)
    try:
        w.on_msg_from_main(lambda e, a: release.wait(20), channel="slow")
        future = main.main_call_render("w", None, channel="slow", timeout=20)
        main.close()
        with pytest.raises(Closed):
            future.result(WAIT)
    finally:
        release.set()
        w.close()
        main.close()


def test_window_pending_request_fails_with_peer_lost_when_main_closes():
    main = Main("tcp://127.0.0.1:0")
    release, entered = threading.Event(), threading.Event()
    main.on_msg_from_render(lambda e, a: (entered.set(), release.wait(20)), channel="slow")
    w = Window("w", main.endpoint, key=main.key)
    closer = threading.Thread(target=main.close, name="test-closer")
    try:
        future = w.render_msg_to_main(None, channel="slow", timeout=20)
        assert entered.wait(WAIT)
        closer.start()  # close() waits for the blocked handler; the goodbye goes out first
        with pytest.raises(PeerLost):
            future.result(WAIT)
        assert not w.connected
    finally:
        release.set()
        if closer.ident is not None:
            closer.join(WAIT)
        w.close()
        main.close()


def test_main_call_pending_on_a_window_that_closes_fails_with_peer_lost(main, window):
    w = window("w")
    release, entered = threading.Event(), threading.Event()
    w.on_msg_from_main(lambda e, a: (entered.set(), release.wait(20)), channel="slow")
    closer = threading.Thread(target=w.close, name="test-window-closer")
    try:
        future = main.main_call_render("w", None, channel="slow", timeout=20)
        assert entered.wait(WAIT)
        closer.start()  # the window says goodbye first, then waits for its callback
        with pytest.raises(PeerLost):
            future.result(WAIT)
        assert not main.has_window("w")
    finally:
        release.set()
        if closer.ident is not None:
            closer.join(WAIT)


def test_handler_that_finishes_after_its_main_closed_is_harmless(caplog):
    # Its reply has nowhere to go; it must be dropped quietly, not written to a closed descriptor.
    main = Main("tcp://127.0.0.1:0")
    release, entered, finished = threading.Event(), threading.Event(), threading.Event()

    @main.on_msg_from_render(channel="slow")
    def outlives_main(event, args):
        entered.set()
        release.wait(20)
        finished.set()
        return "too late"

    w = Window("w", main.endpoint, key=main.key)
    closer = threading.Thread(target=main.close, name="test-closer")
    try:
        future = w.render_msg_to_main(None, channel="slow", timeout=20)
        assert entered.wait(WAIT)
        closer.start()
        with pytest.raises(PeerLost):
            future.result(WAIT)
        # close() stops the I/O thread before it waits for handlers: let it get that far
        assert wait_until(lambda: not any(t.name.startswith("zprokit-main-io") for t in threading.enumerate()), WAIT)
        release.set()
        assert finished.wait(WAIT)
        closer.join(WAIT)
        assert not closer.is_alive()
    finally:
        release.set()
        w.close()
        main.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


# ---------------------------------------------------------------------------- module-level API


def test_module_level_api_and_aliases():
    main = zprokit.init_ipc("tcp://127.0.0.1:0")
    win = None
    try:
        assert zprokit.get_main() is main
        with pytest.raises(ZprokitError):
            zprokit.init_ipc("tcp://127.0.0.1:0")  # one default main at a time
        connected, disconnected = Inbox(), Inbox()
        zprokit.on_window_connected(connected.put)
        zprokit.on_window_disconnected(disconnected.put)

        @zprokit.on_msg_from_render(channel="sum")
        def total(event, args):
            return sum(args)

        zprokit.on_msg_from_render(lambda e, a: "scratch", channel="scratch")
        assert zprokit.off_msg_from_render("scratch") is True

        win = zprokit.init_expose_in_main_world("solo", main.endpoint, key=main.key)
        assert zprokit.get_render() is win
        assert connected.get(WAIT).name == "solo"
        assert zprokit.has_window("solo") and zprokit.get_window("solo").name == "solo"
        assert [i.name for i in zprokit.get_all_windows()] == ["solo"]

        assert zprokit.render_msg_to_main([1, 2], channel="sum").result(WAIT) == 3
        assert zprokit.send_msg_to_main([3, 4], channel="sum").result(WAIT) == 7
        with pytest.raises(NoHandler):
            zprokit.render_msg_to_main(None, channel="scratch", timeout=60).result(WAIT)

        from_main = Inbox()
        cb = zprokit.on_msg_from_main(lambda e, m: from_main.put(m), channel="tell")
        zprokit.main_msg_to_render("solo", "a", channel="tell")
        zprokit.send_msg_to_render("solo", "b", channel="tell")
        assert from_main.wait_for(2, WAIT) == ["a", "b"]
        zprokit.on_msg_from_main(lambda e, m: m.upper(), channel="shout")
        assert zprokit.main_call_render("solo", "hey", channel="shout").result(WAIT) == "HEY"
        assert zprokit.off_msg_from_main(cb) is True

        from_render = Inbox()
        rcb = zprokit.on_render_msg_to_render(lambda e, m: from_render.put((e.sender, m)), channel="r")
        zprokit.on_msg_from_other_render(lambda e, m: from_render.put(("alias", m)), channel="r2")
        assert zprokit.render_msg_to_render("solo", 1, channel="r").result(WAIT) is None  # to itself, via main
        assert zprokit.send_msg_to_other_render("solo", 2, channel="r2").result(WAIT) is None
        assert sorted(from_render.wait_for(2, WAIT)) == [("alias", 2), ("solo", 1)]
        assert zprokit.render_call_render("solo", 5, channel="r").result(WAIT) is None  # first callback's value
        assert from_render.wait_for(3, WAIT)[2] == ("solo", 5)
        assert zprokit.off_render_msg_to_render(rcb) is True

        casts = Inbox()
        bcb = zprokit.on_broadcast(lambda e, m: casts.put((e.topic, m)), topic="t")
        zprokit.broadcast("x", topic="t.1")
        assert casts.get(WAIT) == ("t.1", "x")
        assert zprokit.off_broadcast(bcb) is True

        assert zprokit.destroy_window("solo") is True
        assert win.wait_closed(WAIT)
        assert disconnected.get(WAIT).name == "solo"
        with pytest.raises(ZprokitError):
            zprokit.get_render()
    finally:
        if win is not None:
            win.close()
        main.close()
    with pytest.raises(ZprokitError):
        zprokit.get_main()


def test_aliases_are_the_same_functions():
    assert zprokit.send_msg_to_render is zprokit.main_msg_to_render
    assert zprokit.send_msg_to_main is zprokit.render_msg_to_main
    assert zprokit.send_msg_to_other_render is zprokit.render_msg_to_render
    assert zprokit.on_msg_from_other_render is zprokit.on_render_msg_to_render


def test_init_ipc_again_after_close_on_the_same_endpoint():
    first = zprokit.init_ipc("tcp://127.0.0.1:0")
    endpoint = first.endpoint
    with Window("w", endpoint, key=first.key) as w:
        first.on_msg_from_render(lambda e, a: "first")
        assert w.render_msg_to_main(None).result(WAIT) == "first"
    first.close()
    second = zprokit.init_ipc(endpoint, key=first.key)
    try:
        assert second is not first and second.endpoint == endpoint
        second.on_msg_from_render(lambda e, a: "second")
        with zprokit.init_expose_in_main_world("w", endpoint, key=first.key) as w2:
            assert zprokit.render_msg_to_main(None).result(WAIT) == "second"
            assert w2.connected
    finally:
        second.close()


# ---------------------------------------------------------------------------- keys and handshake


def test_key_as_str_or_bytes():
    with Main("tcp://127.0.0.1:0", key="s3cret-κλειδί") as main:
        assert main.key == "s3cret-κλειδί".encode()
        main.on_msg_from_render(lambda e, a: e.sender)
        with Window("str", main.endpoint, key="s3cret-κλειδί") as a, \
                Window("bytes", main.endpoint, key="s3cret-κλειδί".encode()) as b:
            assert a.render_msg_to_main(None).result(WAIT) == "str"
            assert b.render_msg_to_main(None).result(WAIT) == "bytes"


def test_key_from_environment(monkeypatch):
    monkeypatch.setenv("ZPROKIT_KEY", "key-from-env")
    with Main("tcp://127.0.0.1:0") as main:
        assert main.key == b"key-from-env"
        main.on_msg_from_render(lambda e, a: "ok")
        with Window("w", main.endpoint) as w:  # the window finds it there too
            assert w.key == b"key-from-env"
            assert w.render_msg_to_main(None).result(WAIT) == "ok"
    # An explicit argument wins over the environment.
    with Main("tcp://127.0.0.1:0", key="explicit") as main:
        assert main.key == b"explicit"


def test_random_key_on_loopback_without_one():
    with Main("tcp://127.0.0.1:0") as a, Main("tcp://127.0.0.1:0") as b:
        assert a.key and b.key and a.key != b.key


def test_non_loopback_bind_without_key_is_refused():
    threads = threading.active_count()
    with pytest.raises(ValueError, match="key"):
        Main("tcp://0.0.0.0:0")
    assert threading.active_count() == threads  # refused before anything started


def test_window_without_key_is_refused(main):
    with pytest.raises(ValueError, match="key"):
        Window("w", main.endpoint)


def test_wrong_key_is_authentication_error_and_main_survives(main, window):
    main.on_msg_from_render(lambda e, a: "still here")
    started = time.monotonic()
    with pytest.raises(AuthenticationError):
        Window("intruder", main.endpoint, key=b"not the key", timeout=30)
    assert time.monotonic() - started < WAIT  # refused, not timed out
    assert not main.has_window("intruder")
    assert main.stats()["rejected"].get("bad_signature", 0) >= 1
    assert window("honest").render_msg_to_main(None).result(WAIT) == "still here"


def test_name_in_use(main, window):
    first = window("taken")
    with pytest.raises(NameInUse) as info:
        window("taken")
    assert info.value.name == "taken"
    main.on_msg_from_render(lambda e, a: e.sender)
    assert first.render_msg_to_main(None).result(WAIT) == "taken"  # the holder is undisturbed
    first.close()
    assert wait_until(lambda: not main.has_window("taken"), WAIT)
    again = window("taken")  # once it is gone, the name is free
    assert again.render_msg_to_main(None).result(WAIT) == "taken"


def test_unreachable_main_is_timeout():
    main = Main("tcp://127.0.0.1:0")
    endpoint, key = main.endpoint, main.key
    main.close()
    started = time.monotonic()
    with pytest.raises(Timeout) as info:
        Window("w", endpoint, key=key, timeout=0.5)
    assert time.monotonic() - started < WAIT
    assert isinstance(info.value, TimeoutError)


def test_json_serializer_on_both_sides():
    with Main("tcp://127.0.0.1:0", serializer="json") as main:
        main.on_msg_from_render(lambda e, a: {"got": a, "sum": sum(a["xs"])})
        with Window("w", main.endpoint, key=main.key, serializer="json") as w:
            reply = w.render_msg_to_main({"xs": [1, 2, 3], "t": (1, 2)}).result(WAIT)
            assert reply == {"got": {"xs": [1, 2, 3], "t": [1, 2]}, "sum": 6}  # JSON has no tuples
            w.on_msg_from_main(lambda e, m: m["n"] + 1)
            assert main.main_call_render("w", {"n": 1}).result(WAIT) == 2
            inbox = Inbox()
            w.on_broadcast(lambda e, m: inbox.put(m))
            main.broadcast(["json", None, 1.5])
            assert inbox.get(WAIT) == ["json", None, 1.5]
            main.on_msg_from_render(lambda e, a: object(), channel="unjsonable")
            with pytest.raises(RemoteError) as info:  # a reply JSON cannot carry is the handler's error
                w.render_msg_to_main(None, channel="unjsonable").result(WAIT)
            assert info.value.remote_type == "TypeError" and info.value.origin == "main"


def test_serializer_mismatch_is_protocol_error_at_handshake():
    with Main("tcp://127.0.0.1:0", serializer="json") as main:
        started = time.monotonic()
        with pytest.raises(ProtocolError, match="serializer"):
            Window("w", main.endpoint, key=main.key, serializer="pickle", timeout=30)
        assert time.monotonic() - started < WAIT
        assert not main.has_window("w")


# ---------------------------------------------------------------------------- errors and exports


ERRORS = [WindowNotFound, NoHandler, RemoteError, Timeout, PeerLost, NameInUse, AuthenticationError, ProtocolError,
          zprokit.QueueFull, Closed]


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_every_error_is_exported_and_a_zprokit_error(cls):
    assert getattr(zprokit, cls.__name__) is cls
    assert issubclass(cls, ZprokitError)
    assert cls.__name__ in zprokit.__all__


def test_timeout_is_a_timeout_error():
    assert issubclass(Timeout, TimeoutError)


def test_public_names_are_pinned():
    assert set(zprokit.__all__) == {
        "Main", "Window", "Event", "WindowInfo", "WindowProcess", "ReplyFuture", "ReplyStream",
        "main_stream_from_render", "render_stream_from_main", "render_stream_from_render",
        "init_ipc", "get_main", "on_msg_from_render", "off_msg_from_render", "main_msg_to_render",
        "main_call_render", "call_any", "call_all", "broadcast", "create_window", "get_window", "has_window",
        "get_all_windows", "wait_for_window",
        "destroy_window", "on_window_connected", "on_window_disconnected",
        "init_expose_in_main_world", "get_render", "render_msg_to_main", "on_msg_from_main",
        "off_msg_from_main", "render_msg_to_render", "on_render_msg_to_render", "off_render_msg_to_render",
        "render_call_render", "render_call_any", "on_broadcast", "off_broadcast",
        "send_msg_to_render", "send_msg_to_main", "send_msg_to_other_render", "on_msg_from_other_render",
        "ZprokitError", "WindowNotFound", "NoHandler", "RemoteError", "Timeout", "PeerLost", "NameInUse",
        "AuthenticationError", "ProtocolError", "QueueFull", "MessageTooLarge", "Closed",
        "generate_key", "build_mode", "__version__",
    }
    assert len(zprokit.__all__) == len(set(zprokit.__all__))
    for name in zprokit.__all__:
        assert hasattr(zprokit, name), name


def test_every_module_level_name_is_a_method_of_main_or_window_too():
    """The module-level functions are a convenience over the classes: each (the newer
    electron-prokit names included) exists on ``Main`` or ``Window`` under the same name."""
    from zprokit import api

    module_only = {"init_ipc", "get_main", "init_expose_in_main_world", "get_render"}
    main_side = {n for n in api.__all__ if n not in module_only and callable(getattr(zprokit.Main, n, None))}
    window_side = {n for n in api.__all__ if n not in module_only and callable(getattr(zprokit.Window, n, None))}
    assert set(api.__all__) - module_only == main_side | window_side, \
        f"missing on the classes: {sorted(set(api.__all__) - module_only - main_side - window_side)}"
    assert {"send_msg_to_render"} <= main_side
    assert {"send_msg_to_main", "send_msg_to_other_render", "on_msg_from_other_render"} <= window_side


def test_the_newer_names_work_on_the_classes(main, window):
    w = window()
    other = window()
    main.on_msg_from_render(lambda event, args: args + 1)
    assert w.send_msg_to_main(1).result(5) == 2
    got = Inbox()
    other.on_msg_from_other_render(lambda event, args: got.put((event.sender, args)))
    assert w.send_msg_to_other_render(other.name, "hi").result(5) is None
    assert got.get(5) == (w.name, "hi")
    w.on_msg_from_main(lambda event, args: got.put(("main", args, event.from_main)))
    main.send_msg_to_render(w.name, "yo")
    assert got.get(5) == ("main", "yo", True)


def test_a_window_may_be_called_main_and_events_stay_unambiguous(main, window):
    """electron-prokit's main window is called "main": the seed's mainMsgToRender("main", ...)."""
    render = window("main")
    work = window("work")
    got = Inbox()
    render.on_msg_from_main(lambda event, args: got.put(("from main process", event.sender, event.from_main, args)))
    work.on_render_msg_to_render(lambda event, args: got.put(("from window", event.sender, event.from_main, args)))
    main.main_msg_to_render("main", "msg from main")
    assert got.get(5) == ("from main process", "main", True, "msg from main")
    render.render_msg_to_render("work", "Hello Work").result(5)
    assert got.get(5) == ("from window", "main", False, "Hello Work")
    main.on_msg_from_render(lambda event, args: (event.sender, event.from_main), channel="who")
    assert render.render_msg_to_main(None, channel="who").result(5) == ("main", False)
    assert main.get_window("main").name == "main"


@pytest.mark.parametrize("endpoint", ["127.0.0.1:5599", "localhost", "tcp://127.0.0.1", "tcp://:5555",
                                      "udp://127.0.0.1:5555", "tcp://127.0.0.1:99999", "x" * 10_000])
def test_an_endpoint_without_a_known_transport_fails_at_once_in_one_short_line(endpoint):
    started = time.monotonic()
    with pytest.raises(ValueError) as raised:
        Window("w", endpoint, key=b"k" * 32, timeout=30)
    message = str(raised.value)
    assert "\n" not in message and len(message) < 250 and "tcp://" in message
    with pytest.raises(ValueError) as raised:
        Main(endpoint)
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 250
    assert time.monotonic() - started < 5, "a bad endpoint cost a timeout"
