"""create_window and the whole API across real processes: a main here, windows in their own.

Targets are either closures (cloudpickled) or ``"_targets:<function>"``
strings, imported by the child from this directory (``PYTHONPATH``).
Everything waits on futures or events, never on a fixed sleep.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time

import pytest

import zprokit
from zprokit import Main, RemoteError, WindowNotFound

from conftest import TESTS_DIR, Inbox, child_pids, wait_until

pytestmark = pytest.mark.timeout(60)

START = 20.0  # a window process may take this long to start and connect on a loaded machine
WAIT = 10.0
ENV = {"PYTHONPATH": TESTS_DIR}


@pytest.fixture
def main():
    m = Main("tcp://127.0.0.1:0")
    reports = Inbox()
    m.on_msg_from_render(lambda event, what: reports.put(what), channel="report")
    m.reports = reports
    try:
        yield m
    finally:
        m.close()


def test_closure_target_runs_in_a_new_process_and_exits_0(main):
    token = secrets.token_hex(8)  # captured by the closure, so it travels by value

    def target(window):
        window.render_msg_to_main(("closure", token, os.getpid(), window.name), channel="report").result(10)

    handle = main.create_window("closure", target, env=ENV)
    assert isinstance(handle, zprokit.WindowProcess)
    assert handle.name == "closure"
    assert handle.pid != os.getpid() and handle.pid in child_pids()
    assert main.reports.get(START) == ("closure", token, handle.pid, "closure")
    assert handle.join(WAIT) == 0
    assert not handle.is_alive()
    assert wait_until(lambda: not main.has_window("closure"), WAIT)


def test_module_function_target_exits_0_when_it_returns(main):
    handle = main.create_window("returns", "_targets:returns", env=ENV)
    assert main.reports.get(START) == ("hello", handle.pid)
    assert handle.join(WAIT) == 0


def test_target_that_raises_exits_1(main):
    handle = main.create_window("raises", "_targets:raises", env=ENV, stderr=subprocess.DEVNULL)
    assert main.reports.get(START) == ("about to raise", handle.pid)
    assert handle.join(WAIT) == 1
    assert not handle.is_alive()


def test_bad_targets_are_refused_before_starting_anything(main):
    before = child_pids()
    with pytest.raises(ValueError):
        main.create_window("x", "no_colon_here")
    with pytest.raises(TypeError):
        main.create_window("x", 42)
    assert child_pids() == before


def test_handle_join_is_alive_and_terminate(main):
    gone = Inbox()
    main.on_window_disconnected(gone.put)
    handle = main.create_window("served", "_targets:serve", env=ENV)
    assert main.reports.get(START) == ("ready", handle.pid)
    info = main.get_window("served")
    assert info is not None and info.pid == handle.pid
    assert handle.is_alive()
    assert handle.join(0.1) is None  # still running: join gives up after its timeout
    handle.terminate()
    # SIGTERM closes the window cleanly: the main hears its goodbye, and the process ends.
    assert handle.join(WAIT) == 128 + signal.SIGTERM
    assert not handle.is_alive()
    assert gone.get(WAIT).name == "served"
    assert not main.has_window("served")


def _read_proc(pid: int, what: str) -> bytes:
    with open(f"/proc/{pid}/{what}", "rb") as f:
        return f.read()


def test_key_and_endpoint_travel_in_the_environment_not_the_command_line(main):
    handle = main.create_window("secretive", "_targets:serve", env=ENV)
    assert main.reports.get(START) == ("ready", handle.pid)
    key_forms = [main.key, main.key.hex().encode()]
    endpoint = main.endpoint.encode()
    port = main.endpoint.rsplit(":", 1)[1].encode()

    environ = _read_proc(handle.pid, "environ").split(b"\0")
    assert any(form in entry for entry in environ for form in key_forms), "key not in the child's environment"
    assert any(endpoint in entry for entry in environ), "endpoint not in the child's environment"
    seen = main.main_call_render("secretive", ["ZPROKIT_ENDPOINT", "ZPROKIT_NAME"], channel="environ").result(WAIT)
    assert seen == {"ZPROKIT_ENDPOINT": main.endpoint, "ZPROKIT_NAME": "secretive"}

    cmdline = _read_proc(handle.pid, "cmdline")
    assert cmdline  # a live process shows its command line
    for secret in (*key_forms, endpoint, port):
        assert secret not in cmdline, f"{secret!r} is visible in {cmdline!r}"
    assert main.destroy_window("secretive")
    assert handle.join(WAIT) == 0


def test_main_and_two_windows_in_separate_processes():
    with Main("tcp://127.0.0.1:0") as main:
        reports = Inbox()
        connected, disconnected = Inbox(), Inbox()
        main.on_msg_from_render(lambda event, what: reports.put(what), channel="report")
        main.on_msg_from_render(lambda event, n: ("doubled for", event.sender, n * 2), channel="double")
        main.on_window_connected(connected.put)
        main.on_window_disconnected(disconnected.put)

        alpha = main.create_window("alpha", "_targets:peer", env=ENV)

        def beta_target(window):  # a closure around the same role, to mix both kinds of target
            import _targets

            _targets.peer(window)

        beta = main.create_window("beta", beta_target, env=ENV)
        pids = {"alpha": alpha.pid, "beta": beta.pid}
        ready = reports.wait_for(2, START)
        assert sorted(ready) == [("ready", "alpha", alpha.pid), ("ready", "beta", beta.pid)]
        taken = 2

        def next_reports(n):
            nonlocal taken
            got = reports.wait_for(taken + n, WAIT)[taken:]
            taken += n
            return got

        # presence and the registry
        assert sorted((i.name, i.pid) for i in connected.wait_for(2, WAIT)) == sorted(pids.items())
        assert sorted((i.name, i.pid) for i in main.get_all_windows()) == sorted(pids.items())
        assert main.get_window("alpha").pid == alpha.pid

        # main -> render: a call, and a one-way message
        assert main.main_call_render("alpha", "x", channel="ping").result(WAIT) == ("pong", "alpha", alpha.pid, "main", "x")
        main.main_msg_to_render("beta", "hello beta", channel="tell")
        assert next_reports(1) == [("told", "beta", "main", "hello beta")]

        # render -> main with a reply (asked for by the main, so a window callback waits on the main)
        assert main.main_call_render("alpha", 21, channel="ask_main").result(WAIT) == ("doubled for", "alpha", 42)

        # render -> render: a call, and a one-way message whose future resolves to None
        assert main.main_call_render("beta", "alpha", channel="call_peer").result(WAIT) == ("alpha", "beta", 5)
        assert main.main_call_render("alpha", "beta", channel="call_peer").result(WAIT) == ("beta", "alpha", 5)
        assert main.main_call_render("beta", "alpha", channel="note_peer").result(WAIT) is None
        assert next_reports(1) == [("note", "alpha", "beta", "hi from beta")]
        # an unknown target fails the sender's future, and that reaches us as the callback's error
        with pytest.raises(RemoteError) as info:
            main.main_call_render("beta", "gamma", channel="note_peer").result(WAIT)
        assert info.value.remote_type == "zprokit.errors.WindowNotFound" and info.value.origin == "beta"

        # broadcasts: by topic prefix, to both
        main.broadcast("rain", topic="weather")
        main.broadcast("goal", topic="news.sport")
        assert sorted(next_reports(2)) == [
            ("broadcast", "alpha", "news.sport", "goal"),
            ("broadcast", "beta", "news.sport", "goal"),
        ]  # each window reports its broadcasts in order, so "weather" would have come first

        # the end: destroy_window closes each window, its target returns, its process exits 0
        assert main.destroy_window("alpha") and main.destroy_window("beta")
        assert alpha.join(WAIT) == 0 and beta.join(WAIT) == 0
        assert sorted(i.name for i in disconnected.wait_for(2, WAIT)) == ["alpha", "beta"]
        assert main.get_all_windows() == []
        with pytest.raises(WindowNotFound):
            main.main_msg_to_render("alpha", "anyone?")
        assert len(reports) == taken  # nothing unexpected arrived


def test_destroy_window_ends_a_created_process(main):
    handle = main.create_window("doomed", "_targets:serve", env=ENV)
    assert main.reports.get(START) == ("ready", handle.pid)
    assert main.destroy_window("doomed") is True
    assert handle.join(WAIT) == 0
    assert wait_until(lambda: not main.has_window("doomed"), WAIT)


def test_destroy_window_ends_a_process_that_ignores_closing(main):
    handle = main.create_window("stubborn", "_targets:stubborn", env=ENV)
    assert main.reports.get(START) == ("ready", handle.pid)
    assert main.destroy_window("stubborn", grace=0.5) is True
    # the window closed at once; after the grace period the process got SIGTERM
    assert handle.join(WAIT) == 128 + signal.SIGTERM
    assert wait_until(lambda: not main.has_window("stubborn"), WAIT)


def test_main_close_leaves_no_child_process():
    main = Main("tcp://127.0.0.1:0")
    try:
        reports = Inbox()
        main.on_msg_from_render(lambda event, what: reports.put(what), channel="report")
        handles = [
            main.create_window("w1", "_targets:serve", env=ENV),
            main.create_window("w2", "_targets:serve", env=ENV),
            main.create_window("w3", "_targets:stubborn", env=ENV),
        ]
        assert sorted(reports.wait_for(3, START)) == sorted(("ready", h.pid) for h in handles)
        assert {h.pid for h in handles} <= child_pids()
    finally:
        main.close(grace=1.0)
    assert not any(h.is_alive() for h in handles)
    assert [h.returncode for h in handles] == [0, 0, 128 + signal.SIGTERM]  # w3 ignored the goodbye
    assert not ({h.pid for h in handles} & child_pids())  # reaped, not left as zombies


def test_sigkilled_window_is_reaped_by_close_without_hanging():
    main = Main("tcp://127.0.0.1:0")
    try:
        reports = Inbox()
        main.on_msg_from_render(lambda event, what: reports.put(what), channel="report")
        handle = main.create_window("victim", "_targets:serve", env=ENV)
        assert reports.get(START) == ("ready", handle.pid)
        os.kill(handle.pid, signal.SIGKILL)
        assert wait_until(lambda: handle.pid in child_pids() and _state(handle.pid) == "Z", WAIT)  # dead, not reaped
    finally:
        started = time.monotonic()
        main.close(grace=3.0)
        closed_in = time.monotonic() - started
    assert closed_in < WAIT
    assert handle.returncode == -signal.SIGKILL
    assert handle.pid not in child_pids()


def test_module_level_create_window():
    main = zprokit.init_ipc("tcp://127.0.0.1:0")
    try:
        reports = Inbox()
        zprokit.on_msg_from_render(lambda event, what: reports.put(what), channel="report")
        handle = zprokit.create_window("default-main", "_targets:returns", env=ENV)
        assert reports.get(START) == ("hello", handle.pid)
        assert handle.join(WAIT) == 0
    finally:
        main.close()


def _state(pid: int) -> str:
    try:
        return _read_proc(pid, "stat").rsplit(b")", 1)[1].split()[0].decode()
    except FileNotFoundError:
        return "gone"
