"""Bounded under load and under attack: each test floods one path and checks the promise it names.

Loopback only, bounded in count and time. Memory is read from /proc (VmRSS)
of the process that would have grown: the bound asserted is generous (tens
of MB), where the unbounded design grew by hundreds.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
import zmq

from zprokit import Main, QueueFull, Window

from conftest import TESTS_DIR, patiently, wait_until

pytestmark = pytest.mark.timeout(120)

ENV = {"PYTHONPATH": TESTS_DIR}
PADDING = bytes(16_384)
MiB = 1024 * 1024


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def ask(main: Main, name: str, channel: str, arg: object = None) -> object:
    """The window's answer; a full queue (a window still catching up) is waited out."""
    answer: list[object] = []

    def attempt() -> bool:
        try:
            answer.append(main.main_call_render(name, arg, channel=channel, timeout=60).result(60))
        except QueueFull:
            return False
        return True

    assert wait_until(attempt, 60, interval=0.05), f"{name} never answered on {channel!r}"
    return answer[0]


def test_a_slow_consumer_holds_its_sender_back_and_memory_stays_bounded():
    """16 KB one-way messages, faster than a 1 ms callback takes them: the sender waits (credit),
    the window's memory stays within tens of MB, and every message arrives, in order."""
    count = 5_000
    with Main("tcp://127.0.0.1:0") as main:
        handle = main.create_window("sink", "_flood_targets:sleepy_sink", env=ENV)
        main.wait_for_window("sink", timeout=30)
        before = rss(handle.pid)
        peak, started = before, time.monotonic()
        for seq in range(count):
            patiently(lambda: main.main_msg_to_render("sink", (seq, PADDING), timeout=60))
            if seq % 250 == 0:
                peak = max(peak, rss(handle.pid))
        sent_in = time.monotonic() - started
        assert wait_until(lambda: ask(main, "sink", "count", "main") == count, 60)
        peak = max(peak, rss(handle.pid))
        assert ask(main, "sink", "received", "main") == list(range(count))
        stats = ask(main, "sink", "stats")
        assert stats["messages_queued"] == 0
        grew = peak - before
        print(f"\nslow consumer: {count} x 16 KB sent in {sent_in:.1f} s; the window grew by {grew / MiB:.1f} MB at most")
        assert grew < 64 * MiB, f"the window grew by {grew / MiB:.0f} MB: its queue is not bounded"
        assert sent_in > count * 0.001 * 0.5, "the sender was never held back"


def test_a_stopped_consumer_makes_the_sender_wait_then_told():
    with Main("tcp://127.0.0.1:0") as main:
        handle = main.create_window("sink", "_flood_targets:sleepy_sink", env=ENV)
        main.wait_for_window("sink", timeout=30)
        os.kill(handle.pid, 19)  # SIGSTOP
        try:
            sent = 0
            with pytest.raises(QueueFull) as raised:
                for seq in range(100_000):
                    main.main_msg_to_render("sink", (seq, PADDING), timeout=0.5)
                    sent += 1
            assert raised.value.peer == "sink" and main.has_window("sink")
            assert sent <= 1_000, f"{sent} messages taken for a stopped window: no credit limit"
        finally:
            os.kill(handle.pid, 18)  # SIGCONT
        assert wait_until(lambda: ask(main, "sink", "count", "main") == sent, 60)
        assert ask(main, "sink", "received", "main") == list(range(sent))


def test_a_broadcast_flood_to_a_slow_window_adds_up_on_both_sides():
    count = 3_000
    with Main("tcp://127.0.0.1:0") as main:
        handle = main.create_window("sink", "_flood_targets:sleepy_sink", env=ENV)
        main.wait_for_window("sink", timeout=30)
        before = rss(handle.pid)
        refused = 0
        for seq in range(count):
            try:
                main.broadcast(seq, topic="flood", timeout=60)
            except QueueFull:
                refused += 1
        assert main.stats()["broadcasts_refused"] == refused
        sent = count - refused
        assert wait_until(lambda: ask(main, "sink", "count", "broadcast") == sent, 60)
        received = ask(main, "sink", "received", "broadcast")
        stats = ask(main, "sink", "stats")
        assert len(received) + stats["broadcasts_missed"] == sent, (len(received), stats["broadcasts_missed"], sent)
        assert received == sorted(received)
        # the last callback has run; its backlog count comes down right after it returns
        assert wait_until(lambda: ask(main, "sink", "stats")["broadcasts_queued"] == 0, 10)
        assert rss(handle.pid) - before < 64 * MiB


def test_strangers_cannot_subscribe_to_the_broadcast_port():
    """Without the key (and without CURVE), a stranger's SUB gets nothing, its subscriptions never
    reach the main, and its refusal is counted; the honest window is served all along."""
    with Main("tcp://127.0.0.1:0") as main, Window("honest", main.endpoint, key=main.key) as window:
        got = []
        window.on_broadcast(lambda event, msg: got.append(msg))
        ctx = zmq.Context()
        strangers = []
        try:
            for i in range(20):
                sub = ctx.socket(zmq.SUB)
                sub.linger = 0
                for t in range(500):  # 10,000 unique subscriptions in all
                    sub.setsockopt(zmq.SUBSCRIBE, f"B{i}-{t}-".encode() + bytes(150))
                sub.setsockopt(zmq.SUBSCRIBE, b"")
                sub.connect(main.pub_endpoint)
                strangers.append(sub)
            assert wait_until(lambda: main.stats()["rejected"]["unauthenticated"] >= 20, 10)
            main.broadcast("for the honest only")
            assert wait_until(lambda: got == ["for the honest only"], 5)
            assert not any(s.poll(200) for s in strangers), "a stranger received a broadcast"
            assert len(main._session._subscriptions) <= 1  # no stranger's subscription was recorded
            assert main.has_window("honest") and window.connected
        finally:
            for s in strangers:
                s.close(0)
            ctx.term()


def test_junk_at_the_broadcast_port_costs_nothing_and_is_survived():
    with Main("tcp://127.0.0.1:0") as main, Window("honest", main.endpoint, key=main.key) as window:
        main.on_msg_from_render(lambda event, args: args)
        host, port = main.pub_endpoint.rsplit("//", 1)[1].rsplit(":", 1)
        before = rss(os.getpid())
        for _ in range(200):
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(os.urandom(4096))
        assert window.render_msg_to_main("still here").result(5) == "still here"
        assert rss(os.getpid()) - before < 32 * MiB


def test_a_strangers_hang_ups_cost_the_main_constant_work(monkeypatch):
    """No amplification: a hang-up is looked up by its descriptor, never a ping to every window."""
    with Main("tcp://127.0.0.1:0") as main:
        windows = [Window(f"w{i}", main.endpoint, key=main.key) for i in range(20)]
        try:
            victim = main.create_window("victim", "_targets:slow_to_set_up", env=ENV)
            main.wait_for_window("victim", timeout=30)
            checks: list[str] = []
            real = main._router._ping  # how the main looks at a window whose connection closed
            monkeypatch.setattr(main._router, "_ping", lambda name: (checks.append(name), real(name)))
            sweeps: list[int] = []
            monkeypatch.setattr(main._router, "_sweep", lambda: sweeps.append(1))
            before = main.stats()["disconnects"]
            host, port = main.endpoint.rsplit("//", 1)[1].rsplit(":", 1)
            for _ in range(100):
                socket.create_connection((host, int(port)), timeout=5).close()
            assert wait_until(lambda: main.stats()["disconnects"] - before >= 100, 10)
            time.sleep(0.2)  # the checks would come 0.05 s after each event
            assert checks == [] and sweeps == [], f"{len(checks)} checks and {len(sweeps)} sweeps for strangers"
            os.kill(victim.pid, 9)  # a window's connection closes: that window, and only it, is looked at
            assert wait_until(lambda: "victim" in checks, 5)
            assert set(checks) == {"victim"}
            assert wait_until(lambda: not main.has_window("victim"), 5)
            victim.join(5)
        finally:
            for w in windows:
                w.close()


def test_many_calls_that_time_out_cost_in_proportion_and_starve_nothing():
    """20,000 calls that all time out: expiries by deadline order; the heartbeat is never starved,
    no call fails with PeerLost, and nothing is left behind."""
    count = 20_000
    with Main("tcp://127.0.0.1:0", max_queued=count + 10, heartbeat=0.2) as main:
        release = threading.Event()
        main.on_msg_from_render(lambda event, args: release.wait(60), channel="stuck")
        with Window("caller", main.endpoint, key=main.key, heartbeat=0.2) as window:
            try:
                futures = []
                for i in range(count):  # as fast as the queue to the main takes them: QueueFull is "wait"
                    futures.append(patiently(lambda: window.render_msg_to_main(i, channel="stuck", timeout=2.0)))
                errors = {type(f.exception(60)).__name__ for f in futures}
                assert errors == {"Timeout"}, errors
                assert window.connected and main.has_window("caller")
                assert window.stats()["pending_requests"] == 0
            finally:
                release.set()
            # every one was cancelled (the last CANCELs may still be on their way), none is left to run
            assert wait_until(lambda: main.stats()["requests_queued"] == 0, 10), main.stats()
            # the pool's threads come free: every call whose caller gave up leaves unrun
            assert wait_until(lambda: main.stats()["cancelled_before_start"] >= count - 100, 30), main.stats()


def test_a_burst_of_calls_to_a_slow_handler_is_bounded_and_told():
    """The main holds at most max_queued calls for its pool; the rest are answered QueueFull at once."""
    with Main("tcp://127.0.0.1:0", workers=1, max_queued=10) as main:
        release = threading.Event()
        main.on_msg_from_render(lambda event, args: release.wait(30) and args, channel="slow")
        with Window("caller", main.endpoint, key=main.key) as window:
            try:
                futures = [window.render_msg_to_main(i, channel="slow", timeout=30) for i in range(50)]
                refused = [f for f in futures if wait_until(f.done, 0.5) and isinstance(f.exception(0), QueueFull)]
                assert 35 <= len(refused) <= 40, len(refused)  # 1 running, 10 waiting, the rest told at once
                assert main.stats()["requests_queued"] <= 10 and main.stats()["refused_busy"] == len(refused)
            finally:
                release.set()
            served = [f.result(30) for f in futures if f not in refused]
            assert served == sorted(served) and len(served) == 50 - len(refused)
