"""Windows that live and die honestly (the README's "Liveness, restarts and names"), with real processes.

Detection times are printed (run with ``-s``) and bounded by the promise
("within a few heartbeat intervals"), generously, never by a benchmark figure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import zprokit
from conftest import TESTS_DIR, Inbox, wait_until

HEARTBEAT = 0.2
LIVENESS = 3
FEW_INTERVALS = HEARTBEAT * LIVENESS + 2.0  # the promise, with room for a loaded machine

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def main():
    m = zprokit.Main("tcp://127.0.0.1:0", heartbeat=HEARTBEAT, liveness=LIVENESS)
    m.ready = Inbox()  # names of windows whose target has registered its callbacks
    m.on_msg_from_render(lambda event, name: m.ready.put(name), channel="ready")
    try:
        yield m
    finally:
        m.close()


def spawn(main: zprokit.Main, name: str, target: str = "_lifecycle_targets:serve") -> zprokit.WindowProcess:
    """A window process running ``target``; with ``serve``, returns once its callbacks are in place."""
    handle = main.create_window(name, target, env={"PYTHONPATH": TESTS_DIR})
    if target.endswith(":serve"):
        assert wait_until(lambda: name in main.ready.items and main.has_window(name), 15)
    else:
        main.wait_for_window(name, 15)
    return handle


def gone_times(main: zprokit.Main) -> Inbox:
    inbox = Inbox()
    main.on_window_disconnected(lambda info: inbox.put((info.name, time.monotonic())))
    return inbox


def test_sigkilled_window_leaves_the_registry_and_fails_pending_requests(main):
    left = gone_times(main)
    victim = spawn(main, "victim")
    other = zprokit.Window("other", main.endpoint, key=main.key, heartbeat=HEARTBEAT)
    try:
        call = main.main_call_render("victim", 30, channel="nap", timeout=60)
        routed = other.render_call_render("victim", 30, channel="nap", timeout=60)
        # both requests are with the victim now (its callbacks sleep)
        assert wait_until(lambda: main.stats()["messages_routed"] >= 1)
        killed = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        name, when = left.get(timeout=FEW_INTERVALS)
        print(f"\nSIGKILLed window left the registry after {when - killed:.3f} s")
        assert name == "victim" and when - killed < FEW_INTERVALS
        assert not main.has_window("victim") and main.get_window("victim") is None
        for future in (call, routed):
            with pytest.raises(zprokit.PeerLost):
                future.result(timeout=FEW_INTERVALS)
        assert victim.join(5) == -signal.SIGKILL
    finally:
        other.close()


def test_restarted_window_takes_its_name_back(main):
    first = spawn(main, "phoenix")
    os.kill(first.pid, signal.SIGKILL)
    first.join(5)
    second = main.create_window("phoenix", "_lifecycle_targets:serve", env={"PYTHONPATH": TESTS_DIR})
    assert wait_until(lambda: main.ready.items.count("phoenix") == 2, 15)
    assert main.get_window("phoenix").pid == second.pid
    assert main.main_call_render("phoenix", "hi", channel="echo").result(5) == "hi"


def test_a_window_frozen_on_a_half_open_link_is_dropped_then_rejoins(main):
    """SIGSTOP keeps the TCP connection open but silent: only heartbeats can tell."""
    left = gone_times(main)
    came = Inbox()
    main.on_window_connected(lambda info: came.put(info.name))
    frozen = spawn(main, "frozen")
    came.get()
    stopped = time.monotonic()
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        name, when = left.get(timeout=FEW_INTERVALS + 2)
        print(f"\nsilent window declared dead after {when - stopped:.3f} s (heartbeat {HEARTBEAT} s x {LIVENESS})")
        assert name == "frozen"
        assert when - stopped >= HEARTBEAT  # it was the heartbeat, not a closed connection
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    resumed = time.monotonic()
    assert came.get(timeout=15) == "frozen"
    print(f"it rejoined under its name {time.monotonic() - resumed:.3f} s after it was resumed")
    assert main.get_window("frozen").pid == frozen.pid
    assert main.main_call_render("frozen", 7, channel="echo").result(5) == 7


def test_duplicate_live_name_is_refused_and_the_holder_keeps_working(main):
    spawn(main, "unique")
    with pytest.raises(zprokit.NameInUse):
        zprokit.Window("unique", main.endpoint, key=main.key, timeout=5)
    assert main.main_call_render("unique", "still me", channel="echo").result(5) == "still me"
    assert [w.name for w in main.get_all_windows()] == ["unique"]


def test_long_handlers_never_make_a_peer_look_dead(main):
    """A 20 s CPU-bound callback in a window and a 20 s handler in the main, at once."""
    from _lifecycle_targets import spin

    left = gone_times(main)
    reports = Inbox()
    main.on_msg_from_render(lambda event, seconds: spin(seconds), channel="spin")
    main.on_msg_from_render(lambda event, result: reports.put(result), channel="report")
    spawn(main, "busy")
    window_call = main.main_call_render("busy", 20, channel="spin", timeout=60)
    spawn(main, "asker", target="_lifecycle_targets:ask_main_to_spin")
    assert window_call.result(timeout=60) > 0
    assert reports.get(timeout=30) > 0
    assert len(left) == 0, f"windows declared dead during long handlers: {left.items}"
    assert {w.name for w in main.get_all_windows()} == {"busy", "asker"}


def test_close_ends_every_created_process(main):
    handles = [spawn(main, f"w{i}") for i in range(3)]
    os.kill(handles[0].pid, signal.SIGSTOP)  # one that cannot even say goodbye
    main.close()
    for handle in handles:
        assert not handle.is_alive(), handle


def test_created_windows_exit_when_their_main_is_killed():
    env = {**os.environ, "ZPROKIT_KEY": "lifecycle-test-key", "PYTHONPATH": TESTS_DIR}
    proc = subprocess.Popen(
        [sys.executable, os.path.join(TESTS_DIR, "_lifecycle_main.py"), "tcp://127.0.0.1:0"],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    try:
        endpoint = proc.stdout.readline().strip()
        with zprokit.Window("spawner", endpoint, key="lifecycle-test-key") as window:
            child = window.render_msg_to_main("orphan", channel="spawn", timeout=20).result()
        proc.kill()
        proc.wait(5)
        assert wait_until(lambda: _ended(child), 10), f"window process {child} outlived its main"
    finally:
        proc.kill()
        proc.wait(5)
        proc.stdout.close()


def _ended(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_window_survives_a_main_restart_on_the_same_endpoint():
    env = {**os.environ, "ZPROKIT_KEY": "lifecycle-test-key", "PYTHONPATH": TESTS_DIR}
    command = [sys.executable, os.path.join(TESTS_DIR, "_lifecycle_main.py")]

    procs: list[subprocess.Popen] = []

    def start(endpoint: str) -> tuple[subprocess.Popen, str]:
        proc = subprocess.Popen([*command, endpoint], stdout=subprocess.PIPE, text=True, env=env)
        procs.append(proc)
        return proc, proc.stdout.readline().strip()

    proc, endpoint = start("tcp://127.0.0.1:0")
    window = zprokit.Window("survivor", endpoint, key="lifecycle-test-key", heartbeat=HEARTBEAT)
    window.on_msg_from_main(lambda event, msg: f"echo {msg}", channel="echo")
    try:
        assert window.render_msg_to_main("before", channel="call_back").result(10) == "echo before"
        in_flight = window.render_msg_to_main(30, channel="sleep", timeout=60)
        killed = time.monotonic()
        proc.kill()
        proc.wait(5)
        with pytest.raises(zprokit.PeerLost):
            in_flight.result(timeout=FEW_INTERVALS)
        print(f"\nrequest in flight failed {time.monotonic() - killed:.3f} s after the main was killed")
        proc, again = start(endpoint)
        assert again == endpoint
        restarted = time.monotonic()
        assert wait_until(lambda: window.connected, 15)
        print(f"window re-registered {time.monotonic() - restarted:.3f} s after the main restarted")
        # the restarted main calls the window's old listener: it kept its name and callbacks
        assert window.render_msg_to_main("after", channel="call_back").result(10) == "echo after"
    finally:
        window.close()
        for proc in procs:
            proc.kill()
            proc.wait(5)
            proc.stdout.close()


def test_window_gives_up_after_the_configured_time(main):
    window = zprokit.Window("patient", main.endpoint, key=main.key, give_up_after=0.5, heartbeat=HEARTBEAT,
                            exit_with_main=False)  # keep trying after the main's goodbye
    closed = threading.Event()
    threading.Thread(target=lambda: window.wait_closed(15) and closed.set(), daemon=True).start()
    main.close()  # says goodbye; the window retries, then gives up
    assert closed.wait(15)
    assert isinstance(window.close_reason, zprokit.PeerLost)
    assert "gave up" in str(window.close_reason)
    with pytest.raises(zprokit.Closed):
        window.render_msg_to_main("anyone?")


def test_a_window_the_main_dropped_rejoins_though_broadcasts_still_reach_it():
    """The main noticed first: its broadcasts still reach the window, but only answers count as life.

    The window's own liveness (8 heartbeats) outlasts the main's (3), as on a
    partition the main happens to notice first: frozen for longer than the
    main waits but not as long as the window would, it wakes up thinking it is
    still registered. The main ignores its pings now; broadcasts keep coming
    on the old connection. They must not keep it from rejoining.
    """
    key = "lifecycle-test-key"
    with zprokit.Main("tcp://127.0.0.1:0", key=key, heartbeat=HEARTBEAT, liveness=LIVENESS) as main:
        came = Inbox()
        main.on_window_connected(lambda info: came.put(info.name))
        ready = Inbox()
        main.on_msg_from_render(lambda event, name: ready.put(name), channel="ready")
        left = gone_times(main)
        env = {**os.environ, "ZPROKIT_KEY": key, "PYTHONPATH": TESTS_DIR}
        window = subprocess.Popen(
            [sys.executable, "-m", "zprokit", "window", "--name", "lagging", "--connect", main.endpoint,
             "--heartbeat", str(HEARTBEAT), "--liveness", "8", "_lifecycle_targets:serve"],
            env=env, stdin=subprocess.DEVNULL,
        )
        stop = threading.Event()

        def keep_broadcasting() -> None:
            while not stop.wait(HEARTBEAT / 4):
                main.broadcast("still here")

        sender = threading.Thread(target=keep_broadcasting, name="test-broadcasts")
        try:
            assert ready.get(timeout=15) == "lagging"  # connected, and its target's callbacks in place
            os.kill(window.pid, signal.SIGSTOP)
            try:
                assert left.get(timeout=FEW_INTERVALS)[0] == "lagging"
                sender.start()  # broadcasts from now on, every quarter heartbeat
            finally:
                os.kill(window.pid, signal.SIGCONT)
            resumed = time.monotonic()
            assert came.get(timeout=15) == "lagging"
            assert came.get(timeout=HEARTBEAT * 8 + FEW_INTERVALS) == "lagging"
            print(f"\nthe dropped window rejoined {time.monotonic() - resumed:.3f} s after it was resumed, "
                  f"broadcasts flowing")
            assert main.main_call_render("lagging", 5, channel="echo").result(5) == 5
        finally:
            stop.set()
            if sender.ident is not None:
                sender.join(10)
            window.terminate()
            window.wait(10)


def test_a_window_the_main_dropped_is_told_and_rejoins_before_its_own_liveness_limit():
    """The main drops a window that is alive and still connected (as after a one-sided partition):
    its next ping is answered with "rejoin", long before the window would give up on the main."""
    key = "lifecycle-test-key"
    window_liveness = 50  # 10 s at heartbeat 0.2: the window would not notice on its own for that long
    with zprokit.Main("tcp://127.0.0.1:0", key=key, heartbeat=HEARTBEAT, liveness=LIVENESS) as main:
        came = Inbox()
        main.on_window_connected(lambda info: came.put(info.name))
        with zprokit.Window("dropped", main.endpoint, key=key, heartbeat=HEARTBEAT, liveness=window_liveness) as w:
            w.on_msg_from_main(lambda event, msg: msg, channel="echo")
            assert came.get() == "dropped"
            dropped = time.monotonic()
            main._loop.call_soon(lambda: main._router.drop("dropped", "dropped by the test"))
            assert came.get(timeout=HEARTBEAT * window_liveness / 2) == "dropped"
            print(f"\ndropped window rejoined {time.monotonic() - dropped:.3f} s later "
                  f"(its own liveness limit: {HEARTBEAT * window_liveness:.0f} s)")
            assert main.main_call_render("dropped", "back", channel="echo").result(5) == "back"
