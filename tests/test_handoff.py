"""A default handler runs on the thread that read its request; one that takes long hands the I/O
loop to another thread, which goes on in order, and handlers still never exceed ``workers``."""

from __future__ import annotations

import threading

from conftest import idle, wait_until
from zprokit import Main, Window

WAIT = 10.0


def test_a_blocking_handler_hands_the_loop_over_and_the_rest_is_answered_meanwhile():
    with Main("tcp://127.0.0.1:0") as main:
        release, entered = threading.Event(), threading.Event()

        @main.on_msg_from_render(channel="block")
        def block(event, args):
            entered.set()
            release.wait(30)
            return "released"

        main.on_msg_from_render(lambda event, args: args * 2, channel="double")
        with Window("w", main.endpoint, key=main.key) as window:
            assert window.render_msg_to_main(1, channel="double").result(WAIT) == 2
            blocked = window.render_msg_to_main(None, channel="block", timeout=30)
            assert entered.wait(WAIT)
            try:
                # answered while the first handler still blocks: another thread leads the loop now
                assert [window.render_msg_to_main(i, channel="double").result(WAIT) for i in range(50)] == \
                       [2 * i for i in range(50)]
                assert not blocked.done()
                assert main.stats()["handoffs"] >= 1
            finally:
                release.set()
            assert blocked.result(WAIT) == "released"
            assert wait_until(lambda: idle(main, window), WAIT)


def test_what_came_after_a_blocking_call_is_handled_in_order():
    """The thread that takes the loop over goes on from the message after the blocking one (the
    calls to ``seq`` run inline, on whichever thread has the loop, so they show its order)."""
    with Main("tcp://127.0.0.1:0") as main:
        release, seen = threading.Event(), []
        main.on_msg_from_render(lambda event, args: release.wait(30), channel="block")
        main.on_msg_from_render(lambda event, args: seen.append(args), channel="seq", inline=True)
        with Window("w", main.endpoint, key=main.key) as window:
            try:
                for round_ in range(3):
                    blocked = window.render_msg_to_main(None, channel="block", timeout=30)
                    for i in range(300):  # sent at once behind it: most in its batch
                        window.send_msg_to_main((round_, i), channel="seq")
                    assert wait_until(lambda: len(seen) == 300 * (round_ + 1), WAIT), len(seen)
                    assert not blocked.done()
            finally:
                release.set()
            assert seen == [(r, i) for r in range(3) for i in range(300)]
            assert main.stats()["handoffs"] >= 1


def test_handlers_that_hold_the_loop_thread_count_against_workers():
    with Main("tcp://127.0.0.1:0", workers=2) as main:
        release, running, most = threading.Event(), [0], [0]
        lock = threading.Lock()

        @main.on_msg_from_render(channel="block")
        def block(event, args):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            release.wait(30)
            with lock:
                running[0] -= 1
            return args

        with Window("w", main.endpoint, key=main.key) as window:
            try:
                futures = [window.render_msg_to_main(i, channel="block", timeout=30) for i in range(6)]
                assert wait_until(lambda: main.stats()["requests_running"] == 2 and
                                  main.stats()["requests_queued"] == 4, WAIT), main.stats()
                assert most[0] == 2
            finally:
                release.set()
            assert [f.result(WAIT) for f in futures] == list(range(6))
            assert most[0] == 2
            assert wait_until(lambda: idle(main, window), WAIT)


def test_a_window_callback_that_blocks_hands_the_windows_loop_over():
    with Main("tcp://127.0.0.1:0") as main:
        with Window("w", main.endpoint, key=main.key) as window:
            release, entered = threading.Event(), threading.Event()

            @window.on_msg_from_main(channel="block")
            def block(event, args):
                entered.set()
                release.wait(30)
                return "released"

            window.on_msg_from_main(lambda event, args: -args, channel="neg")
            blocked = main.main_call_render("w", None, channel="block", timeout=30)
            assert entered.wait(WAIT)
            try:
                assert [main.main_call_render("w", i, channel="neg").result(WAIT) for i in range(20)] == \
                       [-i for i in range(20)]
                assert window.stats()["handoffs"] >= 1
            finally:
                release.set()
            assert blocked.result(WAIT) == "released"
            assert wait_until(lambda: idle(main, window), WAIT)


def test_a_handler_that_waits_on_a_call_of_its_own_gets_its_answer():
    """Its loop thread waits on a future: the loop goes on elsewhere and reads the answer."""
    with Main("tcp://127.0.0.1:0") as main:
        with Window("helper", main.endpoint, key=main.key) as helper, \
                Window("caller", main.endpoint, key=main.key) as caller:
            helper.on_msg_from_main(lambda event, args: args + 1, channel="inc")
            main.on_msg_from_render(lambda event, args: main.main_call_render("helper", args, channel="inc").result(WAIT),
                                    channel="nested")
            assert [caller.render_msg_to_main(i, channel="nested").result(WAIT) for i in range(20)] == \
                   [i + 1 for i in range(20)]
            assert main.stats()["handoffs"] >= 1
            assert wait_until(lambda: idle(main, helper, caller), WAIT)


class _LoadsFails:
    """Unpickles into an error (int("x") raises ValueError)."""

    def __reduce__(self):
        return (int, ("x",))


class _DumpsExits:
    """Pickling it raises SystemExit: the answer of a handler that returns it fails, the node lives."""

    def __reduce__(self):
        raise SystemExit("from __reduce__")


def test_a_call_that_fails_before_its_handler_gives_its_slot_back():
    with Main("tcp://127.0.0.1:0", workers=1) as main:
        main.on_msg_from_render(lambda event, args: args, channel="echo")
        with Window("w", main.endpoint, key=main.key) as window:
            for _ in range(3):  # each takes the one slot, and fails before the handler runs
                assert isinstance(window.render_msg_to_main(_LoadsFails(), channel="echo").exception(WAIT), Exception)
            assert window.render_msg_to_main("still served", channel="echo").result(WAIT) == "still served"
            assert wait_until(lambda: idle(main, window), WAIT)


def test_a_handler_whose_answer_exits_on_pickling_leaves_the_node_up():
    with Main("tcp://127.0.0.1:0") as main:
        main.on_msg_from_render(lambda event, args: _DumpsExits(), channel="bad")
        main.on_msg_from_render(lambda event, args: args, channel="echo")
        with Window("w", main.endpoint, key=main.key) as window:
            error = window.render_msg_to_main(None, channel="bad").exception(WAIT)
            assert "SystemExit" in repr(error) or "from __reduce__" in str(error), error
            assert window.render_msg_to_main(1, channel="echo").result(WAIT) == 1
            assert not main.closed


def test_quick_handlers_one_after_another_do_not_hold_the_loop():
    """Handlers of a few ms each never lose the lead alone; after 5 ms of them in one turn, the
    rest of the turn's calls go to the pool, so the loop reads on."""
    import time

    with Main("tcp://127.0.0.1:0") as main:
        threads = []

        @main.on_msg_from_render(channel="work")
        def work(event, args):
            threads.append(threading.current_thread().name)
            time.sleep(0.004)
            return args

        with Window("w", main.endpoint, key=main.key) as window:
            futures = [window.render_msg_to_main(i, channel="work", timeout=30) for i in range(60)]
            assert [f.result(30) for f in futures] == list(range(60))
        assert len(set(threads)) > 1, set(threads)  # not every one on the loop's thread


def test_close_waits_for_a_handler_running_off_the_pool():
    main = Main("tcp://127.0.0.1:0")
    entered, finished = threading.Event(), threading.Event()

    @main.on_msg_from_render(channel="slow")
    def slow(event, args):
        entered.set()
        import time

        time.sleep(0.3)
        finished.set()
        return args

    window = Window("w", main.endpoint, key=main.key)
    try:
        window.render_msg_to_main(None, channel="slow", timeout=10)
        assert entered.wait(WAIT)
        main.close()
        assert finished.is_set()  # close() let it finish, as it does a pool thread's
    finally:
        window.close()
        main.close()
