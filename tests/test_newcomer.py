"""A newcomer's first hour: created windows ready when waited for, a main's goodbye, bad keys.

Each test is a mistake or an expectation a new user has, tried as they would.
"""

from __future__ import annotations

import logging
import time

import pytest

import zprokit
from zprokit import Main, NoHandler, Window

from conftest import TESTS_DIR, wait_until

pytestmark = pytest.mark.timeout(60)
ENV = {"PYTHONPATH": TESTS_DIR}


def test_wait_for_window_returns_once_a_created_windows_callbacks_are_in_place():
    with Main("tcp://127.0.0.1:0") as main:
        main.create_window("slow", "_targets:slow_to_set_up", env=ENV)
        info = main.wait_for_window("slow", timeout=30)
        assert info.ready
        # sent at once after the wait: never NoHandler, never a message lost
        assert main.main_call_render("slow", 14, channel="triple").result(10) == 42
        with Window("caller", main.endpoint, key=main.key) as caller:
            assert caller.render_call_render("slow", "x", channel="echo").result(10) == "x"


def test_a_created_window_that_says_ready_without_waiting_counts_as_ready():
    with Main("tcp://127.0.0.1:0") as main:
        handle = main.create_window("worker", "_targets:ready_then_work", env=ENV)
        assert main.wait_for_window("worker", timeout=30).ready
        assert main.main_call_render("worker", None, channel="finish").result(10) == "done"
        assert handle.join(20) == 0


def test_a_windows_connection_before_it_is_ready_is_visible_but_not_waited_for(zprokit_main):
    with Window("late", zprokit_main.endpoint, key=zprokit_main.key, ready=False) as window:
        assert zprokit_main.has_window("late") and not zprokit_main.get_window("late").ready
        with pytest.raises(zprokit.Timeout, match="did not get ready"):
            zprokit_main.wait_for_window("late", timeout=0.3)
        window.ready()
        assert zprokit_main.wait_for_window("late", timeout=5).ready


def test_a_one_way_message_with_no_callback_is_counted_in_the_main(zprokit_main, zprokit_window):
    window = zprokit_window()
    other = zprokit_window()
    before = zprokit_main.stats()["unhandled"]
    zprokit_main.main_msg_to_render(window.name, "nobody listens", channel="nowhere")
    other.render_msg_to_render(window.name, "nobody here either", channel="nowhere").result(5)
    assert wait_until(lambda: zprokit_main.stats()["unhandled"] - before == 2, 5)
    assert window.stats()["unhandled"] == 2
    with pytest.raises(NoHandler):  # a call, as before, fails at once
        zprokit_main.main_call_render(window.name, 1, channel="nowhere").result(5)


def test_a_mains_goodbye_closes_its_windows_by_default():
    main = Main("tcp://127.0.0.1:0")
    window = Window("w", main.endpoint, key=main.key)
    keeps = Window("keeps", main.endpoint, key=main.key, exit_with_main=False, heartbeat=0.2, max_backoff=0.2)
    try:
        main.close()
        assert window.wait_closed(10), "a window kept going after its main said goodbye"
        assert isinstance(window.close_reason, zprokit.PeerLost) and "goodbye" in str(window.close_reason)
        assert not keeps.closed and wait_until(lambda: not keeps.connected, 5)
        time.sleep(0.5)  # a window told to keep reconnecting is still trying, not closed
        assert not keeps.closed
        again = Main(main.endpoint, key=main.key, heartbeat=0.2)  # ...and comes back to a new main
        try:
            assert wait_until(lambda: keeps.connected, 10)
        finally:
            again.close()
    finally:
        window.close()
        keeps.close()


@pytest.mark.parametrize("key", ["secret", b"short", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"])
def test_a_short_or_low_entropy_key_gets_a_warning_not_a_refusal(key, caplog):
    with caplog.at_level(logging.WARNING, logger="zprokit"):
        with Main("tcp://127.0.0.1:0", key=key) as main:
            with Window("w", main.endpoint, key=key) as window:
                main.on_msg_from_render(lambda event, args: args)
                assert window.render_msg_to_main(1).result(5) == 1
    assert any("key" in r.getMessage() and "weak" in r.getMessage() for r in caplog.records), \
        [r.getMessage() for r in caplog.records]


def test_a_strong_key_gets_no_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="zprokit"):
        with Main("tcp://127.0.0.1:0", key=zprokit.generate_key()):
            pass
    assert not any("weak" in r.getMessage() for r in caplog.records)


def test_a_rejected_message_is_logged_with_its_peers_address(zprokit_main, caplog):
    import zmq

    ctx = zmq.Context()
    stranger = ctx.socket(zmq.DEALER)
    try:
        stranger.connect(zprokit_main.endpoint)
        with caplog.at_level(logging.WARNING, logger="zprokit.main"):
            stranger.send(b"not a zprokit message")
            assert wait_until(lambda: zprokit_main.stats()["rejected"]["unknown_version"] == 1, 5)
        assert any("127.0.0.1" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    finally:
        stranger.close(0)
        ctx.term()


def test_the_readme_fixture_example(zprokit_main, zprokit_window):
    zprokit_main.on_msg_from_render(lambda event, n: 2 * n, channel="double")
    window = zprokit_window("w")
    assert window.render_msg_to_main(21, channel="double").result(5) == 42
    assert zprokit_window().name != "w"
