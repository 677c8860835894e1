"""Cancellation and deadlines: a caller that gives up reaches the handler, and nothing is left behind.

``ReplyFuture.cancel()``, cancelling the asyncio task that awaits a call, and
the caller's timeout each tell the handler's side: a call not started never
starts; a sync handler sees ``event.cancelled``; an ``async def`` handler's
task is cancelled. ``event.deadline`` and ``event.time_remaining()`` carry
the caller's timeout. Every table goes back to empty.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import pytest

from conftest import TESTS_DIR, Inbox, idle, wait_until
from zprokit import Main, Timeout, Window
from zprokit.protocol import Kind

pytestmark = pytest.mark.timeout(60)
WAIT = 10.0


@pytest.fixture
def main(zprokit_main: Main) -> Main:
    return zprokit_main


def waiting_handler(seen: Inbox):
    """A sync handler that waits until its caller gives up, and says what it saw."""

    def handler(event, args):
        seen.put(("started", args))
        seen.put(("cancelled", event.cancelled.wait(WAIT)))
        return "finished anyway"

    return handler


def test_cancel_of_a_pending_call_returns_true_and_reaches_the_running_handler(main, zprokit_window):
    window = zprokit_window()
    seen = Inbox()
    main.on_msg_from_render(waiting_handler(seen), channel="slow")
    future = window.render_msg_to_main("job", channel="slow", timeout=30)
    assert seen.get(WAIT) == ("started", "job")
    assert future.cancel() is True
    assert future.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        future.result(1)
    assert seen.get(WAIT) == ("cancelled", True)
    assert wait_until(lambda: idle(main, window), WAIT)
    assert window.stats()["late_replies"] == 0  # the handler's answer was never sent: nobody to take it


def test_cancel_of_an_answered_call_returns_false_and_changes_nothing(main, zprokit_window):
    window = zprokit_window()
    main.on_msg_from_render(lambda event, args: args + 1, channel="inc")
    future = window.render_msg_to_main(1, channel="inc")
    assert future.result(WAIT) == 2
    assert future.cancel() is False
    assert future.result(0) == 2 and not future.cancelled()


def test_a_cancel_that_arrives_after_the_handler_finished_is_a_no_op(main, zprokit_window):
    window = zprokit_window()
    main.on_msg_from_render(lambda event, args: args, channel="echo")
    assert window.render_msg_to_main("x", channel="echo").result(WAIT) == "x"
    before_main, before_window = main.stats(), window.stats()
    finished_id = window._session.next_id() - 1  # the id of the call just answered
    assert window._link.send(Kind.CANCEL, finished_id, "", "", ())
    assert window.render_msg_to_main("y", channel="echo").result(WAIT) == "y"  # after the CANCEL, in order
    after_main, after_window = main.stats(), window.stats()
    assert after_main["rejected"] == before_main["rejected"] and after_window["rejected"] == before_window["rejected"]
    assert after_main["late_answers"] == before_main["late_answers"]
    assert idle(main, window)


def test_cancel_of_a_queued_call_means_it_never_runs():
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
            assert ran.get(WAIT) == "first"
            queued = [window.render_msg_to_main(i, channel="busy", timeout=30) for i in range(20)]
            assert wait_until(lambda: small.stats()["requests_queued"] == 20, WAIT)
            assert all(future.cancel() for future in queued)
            assert wait_until(lambda: small.stats()["requests_queued"] == 0, WAIT)
            release.set()
            first.result(WAIT)
            assert window.render_msg_to_main("after", channel="busy", timeout=10).result(WAIT) is None
            assert ran.items == ["first", "after"], "a cancelled call was run"
            assert wait_until(lambda: idle(small, window), WAIT)
        finally:
            window.close()
    finally:
        small.close()


def test_the_callers_timeout_reaches_a_running_handler(main, zprokit_window):
    window = zprokit_window()
    seen = Inbox()
    main.on_msg_from_render(waiting_handler(seen), channel="slow")
    future = window.render_msg_to_main("job", channel="slow", timeout=0.3)
    assert seen.get(WAIT) == ("started", "job")
    with pytest.raises(Timeout):
        future.result(WAIT)
    assert seen.get(WAIT) == ("cancelled", True)
    assert wait_until(lambda: idle(main, window), WAIT)


def test_the_handler_sees_the_callers_deadline(main, zprokit_window):
    window = zprokit_window()
    seen = Inbox()
    main.on_msg_from_render(lambda event, args: seen.put((event.deadline, event.time_remaining())), channel="d")
    sent = time.time()
    window.render_msg_to_main(None, channel="d", timeout=20).result(WAIT)
    deadline, remaining = seen.get(WAIT)
    assert sent + 19 < deadline <= time.time() + 20
    assert 19 < remaining <= 20
    window.render_msg_to_main(None, channel="d", timeout=None).result(WAIT)  # request_timeout: 30 by default
    deadline, _ = seen.get(WAIT)
    assert deadline is not None and deadline > time.time() + 25
    window.render_msg_to_main(None, channel="d", timeout=float("inf")).result(WAIT)
    assert seen.get(WAIT) == (None, None)  # no limit, no deadline


def test_cancelling_the_asyncio_task_that_awaits_a_call_cancels_the_async_handler(main, zprokit_window):
    window = zprokit_window()
    seen = Inbox()

    @main.on_msg_from_render(channel="async")
    async def handler(event, args):
        seen.put("started")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.put("handler cancelled")
            raise
        return "not cancelled"

    async def caller() -> None:
        task = asyncio.ensure_future(window.render_msg_to_main("x", channel="async", timeout=30))
        await asyncio.get_running_loop().run_in_executor(None, seen.get, WAIT)  # "started"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(caller())
    assert seen.get(WAIT) == "handler cancelled"
    assert wait_until(lambda: idle(main, window), WAIT)


def test_the_main_cancels_its_call_to_a_window(main, zprokit_window):
    window = zprokit_window("worker")
    seen = Inbox()
    window.on_msg_from_main(waiting_handler(seen), channel="slow")
    future = main.main_call_render("worker", "job", channel="slow", timeout=30)
    assert seen.get(WAIT) == ("started", "job")
    assert future.cancel() is True
    assert seen.get(WAIT) == ("cancelled", True)
    assert wait_until(lambda: idle(main, window), WAIT)


def test_a_window_cancels_its_call_to_another_window_through_the_main(main, zprokit_window):
    caller, callee = zprokit_window("caller"), zprokit_window("callee")
    seen = Inbox()
    callee.on_render_msg_to_render(waiting_handler(seen), channel="slow")
    future = caller.render_call_render("callee", "job", channel="slow", timeout=30)
    assert seen.get(WAIT) == ("started", "job")
    assert main.stats()["pending_routes"] == 1
    assert future.cancel() is True
    assert seen.get(WAIT) == ("cancelled", True)
    assert wait_until(lambda: idle(main, caller, callee), WAIT)


def test_a_handler_that_ignores_the_cancel_finishes_and_its_answer_is_dropped(main, zprokit_window):
    window = zprokit_window()
    release, seen = threading.Event(), Inbox()

    @main.on_msg_from_render(channel="stubborn")
    def stubborn(event, args):
        seen.put("started")
        seen.put(("told", event.cancelled.wait(WAIT)))
        release.wait(WAIT)  # and goes on regardless
        return "done"

    future = window.render_msg_to_main(None, channel="stubborn", timeout=30)
    assert seen.get(WAIT) == "started"
    late_before = main.stats()["late_answers"]
    assert future.cancel()
    assert seen.get(WAIT) == ("told", True)
    assert main.stats()["requests_running"] == 1  # it runs on: a sync handler is told, never killed
    release.set()
    assert wait_until(lambda: main.stats()["late_answers"] == late_before + 1, WAIT)
    assert wait_until(lambda: idle(main, window), WAIT)


def test_a_cancel_reaches_a_callback_in_another_process():
    with Main("tcp://127.0.0.1:0") as main:
        reports = Inbox()
        main.on_msg_from_render(lambda event, what: reports.put(what), channel="report")
        handle = main.create_window("patient", "_targets:patient", env={"PYTHONPATH": TESTS_DIR})
        main.wait_for_window("patient", timeout=20)
        future = main.main_call_render("patient", None, channel="patient", timeout=30)
        assert reports.get(WAIT) == ("started", True)  # it runs, and knows the caller's deadline
        assert future.cancel() is True
        assert reports.get(WAIT) == ("cancelled", True)
        assert wait_until(lambda: idle(main), WAIT)
        main.destroy_window("patient")
        handle.join(WAIT)
