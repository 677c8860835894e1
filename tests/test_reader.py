"""A window's waiting caller reads its own answer (``Link.read_for``).

``ReplyFuture.result()`` on a window's request reads the DEALER on the
waiting thread when no one else does, so the answer needs no handoff from
the I/O thread; everything that is not an answer goes to the loop, in
order. These tests check what that must never cost: order, other threads'
answers, and a prompt end when the window closes or the request times out.
"""

from __future__ import annotations

import threading
import time

import pytest

from zprokit import Closed, Timeout

from conftest import Inbox, patiently, wait_until

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0


@pytest.fixture
def main(zprokit_main):
    return zprokit_main


def test_the_waiting_thread_settles_its_own_answer(main, zprokit_window):
    main.on_msg_from_render(lambda event, args: args * 2, channel="double", inline=True)
    w = zprokit_window()
    settled_on: list[int] = []
    for i in range(20):
        future = w.render_msg_to_main(i, channel="double")
        future.add_done_callback(lambda f: settled_on.append(threading.get_ident()))
        assert future.result(WAIT) == 2 * i
    # Done callbacks run on the thread that settles the future: here, the one that waited.
    # (A few may be settled by the I/O thread if it read first; most must not be.)
    assert settled_on.count(threading.get_ident()) >= 15, settled_on


def test_one_way_messages_keep_their_order_while_a_caller_reads(main, zprokit_window):
    w = zprokit_window("reader")
    inbox = Inbox()
    w.on_msg_from_main(lambda event, n: inbox.put(n), channel="seq")
    count = 500

    def flood(event, args):
        for n in range(count):
            main.main_msg_to_render("reader", n, channel="seq")
        return "sent"

    main.on_msg_from_render(flood, channel="flood", inline=True)
    # The messages and then the answer reach the window while this thread reads.
    assert w.render_msg_to_main(None, channel="flood").result(WAIT) == "sent"
    assert inbox.wait_for(count, WAIT) == list(range(count))


def test_many_threads_waiting_at_once_each_get_their_own_answer(main, zprokit_window):
    main.on_msg_from_render(lambda event, args: args, channel="echo", inline=True)
    w = zprokit_window()
    results: dict[int, list[bool]] = {}
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            results[k] = [w.render_msg_to_main((k, i), channel="echo").result(WAIT) == (k, i) for i in range(200)]
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 4)
    assert not errors
    assert sorted(results) == list(range(8))
    assert all(all(ok) for ok in results.values())


def test_an_answer_read_by_another_waiting_thread_still_reaches_its_caller(main, zprokit_window):
    gate = threading.Event()
    main.on_msg_from_render(lambda event, args: gate.wait(WAIT) and "late", channel="gated")
    main.on_msg_from_render(lambda event, args: "quick", channel="quick", inline=True)
    w = zprokit_window()
    slow = w.render_msg_to_main(None, channel="gated")
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(slow.result(WAIT)))
    reader.start()  # this thread now reads, waiting for the gated answer
    assert wait_until(lambda: w._link.dealer is not None and w._link.dealer.rx.locked(), WAIT)
    # Meanwhile this thread's request is answered; the reader reads that answer for it.
    assert w.render_msg_to_main(None, channel="quick").result(WAIT) == "quick"
    gate.set()
    reader.join(WAIT)
    assert got == ["late"]


def test_close_ends_a_reading_caller_with_closed_at_once(main, zprokit_window):
    gate = threading.Event()
    main.on_msg_from_render(lambda event, args: gate.wait(30), channel="never")
    w = zprokit_window()
    future = w.render_msg_to_main(None, channel="never", timeout=30)
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            future.result(30)
        except BaseException as e:
            outcome.append(e)

    reader = threading.Thread(target=wait)
    reader.start()
    assert wait_until(lambda: w._link.dealer is not None and w._link.dealer.rx.locked(), WAIT)
    started = time.monotonic()
    w.close()
    reader.join(WAIT)
    gate.set()
    assert not reader.is_alive(), "the reading caller was not woken by close()"
    assert len(outcome) == 1 and isinstance(outcome[0], Closed)
    assert time.monotonic() - started < WAIT  # at close, not at the 30 s timeout


def test_the_request_timeout_ends_a_reading_caller_without_a_timeout_of_its_own(main, zprokit_window):
    gate = threading.Event()
    main.on_msg_from_render(lambda event, args: gate.wait(30), channel="never")
    w = zprokit_window()
    try:
        with pytest.raises(Timeout):
            w.render_msg_to_main(None, channel="never", timeout=0.3).result()
    finally:
        gate.set()


def test_pipelined_requests_to_an_inline_handler_are_each_answered_once(main, zprokit_window):
    # An inline handler's replies leave together at the end of the loop's batch: none may be
    # lost, doubled or given to the wrong request, and requests_served counts each once.
    main.on_msg_from_render(lambda event, args: -args, channel="negate", inline=True)
    w = zprokit_window()
    before = main.stats()["requests_served"]
    futures = [patiently(lambda: w.render_msg_to_main(i, channel="negate")) for i in range(3000)]
    assert [f.result(WAIT) for f in futures] == [-i for i in range(3000)]
    assert main.stats()["requests_served"] - before == 3000
    assert w.stats()["late_replies"] == 0
