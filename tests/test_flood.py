"""No loss under load (issue 5, item 5): floods at slow and stopped consumers, across processes.

Every message is delivered, in order, or its sender is told it was not: a
one-way ``render_msg_to_render`` resolves its future once the main has
routed it, or fails it; ``main_msg_to_render`` raises. The main's counters
agree with what was sent. Consumers (``_flood_targets.slow_sink``) run in
their own processes and sleep now and then; nothing here is timed.
"""

from __future__ import annotations

import collections
import os
import signal

import pytest

import zprokit
from zprokit import Main, ZprokitError

from conftest import TESTS_DIR, Inbox, wait_until

pytestmark = pytest.mark.timeout(90)

START = 20.0  # a window process may take this long to start on a loaded machine
DRAIN = 60.0  # for a flood to be consumed
ENV = {"PYTHONPATH": TESTS_DIR}
MESSAGES = 20_000
BROADCASTS = 5_000
# Messages to a stopped window carry this, so its queues fill in a moment, well within
# the liveness limit (3 s): the stop must end in a full queue, not in a missed heartbeat.
PADDING = bytes(16_384)


@pytest.fixture
def main():
    m = Main("tcp://127.0.0.1:0")
    try:
        yield m
    finally:
        m.close()


def start_windows(main: Main, target: str, *names: str) -> list:
    """Start window processes running ``_flood_targets.<target>``; return once each has said it is ready."""
    reports = Inbox()
    main.on_msg_from_render(lambda event, what: reports.put(what), channel="report", replace=True)
    handles = [main.create_window(name, f"_flood_targets:{target}", env=ENV) for name in names]
    assert {reports.get(START) for _ in names} == {("ready", name) for name in names}
    return handles


def ask(main: Main, name: str, channel: str, arg: object = None) -> object:
    return main.main_call_render(name, arg, channel=channel).result(DRAIN)


def has(main: Main, name: str, kind: str, count: int) -> bool:
    """Window ``name`` has ``count`` messages of ``kind``; False while it is away (reconnecting)."""
    try:
        return ask(main, name, "count", kind) >= count
    except ZprokitError:
        return False


def arrived(main: Main, name: str, kind: str, count: int) -> list:
    """What window ``name`` got of ``kind``, once it has ``count`` of them (or after ``DRAIN`` s)."""
    wait_until(lambda: has(main, name, kind, count), DRAIN, interval=0.1)
    return ask(main, name, "received", kind)


def in_order(received: list) -> bool:
    return all(a < b for a, b in zip(received, received[1:]))


@pytest.mark.parametrize("in_flight", [256, None], ids=["256-in-flight", "unbounded"])
def test_window_to_window_flood_to_a_slow_consumer(main, in_flight):
    start_windows(main, "slow_sink", "sink")
    start_windows(main, "source", "source")
    routed_before = main.stats()["messages_routed"]

    outcome = main.main_call_render("source", ("sink", MESSAGES, in_flight, DRAIN), channel="flood",
                                    timeout=3 * DRAIN).result(3 * DRAIN)
    assert not outcome["pending"], f"{outcome['pending']} futures still pending: they must resolve or fail"
    acked, failed = outcome["acked"], outcome["failed"]
    received = arrived(main, "sink", "render", len(acked))

    assert in_order(received), "out of order, or twice"
    missing = set(acked) - set(received)
    assert not missing, f"{len(missing)} acknowledged messages never arrived, e.g. {sorted(missing)[:10]}"
    silent = set(range(MESSAGES)) - set(received) - {int(seq) for seq in failed}
    assert not silent, f"{len(silent)} messages lost without an error to their sender, e.g. {sorted(silent)[:10]}"
    # The main counts a message routed when it has queued it for the target and acknowledged it.
    assert main.stats()["messages_routed"] - routed_before == len(acked) == len(received)
    assert main.has_window("sink"), "a slow consumer is not a dead one: it must stay registered"
    if in_flight is not None:
        # Far below the high-water marks: the sender is slowed down, never refused.
        errors = collections.Counter(e.partition("(")[0] for e in failed.values())
        assert not failed, f"{len(failed)} of {MESSAGES} failed: {errors}"
    assert not any(ask(main, "sink", "stats")["rejected"].values())


def test_main_to_a_stopped_window_fails_loudly_and_loses_nothing():
    with Main("tcp://127.0.0.1:0") as main:
        (sink,) = start_windows(main, "slow_sink", "sink")
        os.kill(sink.pid, signal.SIGSTOP)
        try:
            sent, error = 0, None
            try:
                for seq in range(1_000_000):
                    main.main_msg_to_render("sink", (seq, PADDING))
                    sent += 1
            except ZprokitError as e:
                error = e
        finally:
            os.kill(sink.pid, signal.SIGCONT)
        assert error is not None, "a million messages queued for a stopped window: no high-water mark?"
        assert main.stats()["dropped_hwm"] == 1  # the one that failed, and only it
        received = arrived(main, "sink", "main", sent)
        assert received == list(range(sent)), f"got {len(received)} of the {sent} sent before the error"


def test_a_full_queue_is_backpressure_not_a_lost_window():
    with Main("tcp://127.0.0.1:0") as main:
        (sink,) = start_windows(main, "slow_sink", "sink")
        left = Inbox()
        main.on_window_disconnected(lambda info: left.put(info.name))
        os.kill(sink.pid, signal.SIGSTOP)
        try:
            with pytest.raises(ZprokitError) as raised:
                for seq in range(1_000_000):
                    main.main_msg_to_render("sink", (seq, PADDING))
            registered = main.has_window("sink")
        finally:
            os.kill(sink.pid, signal.SIGCONT)
        assert isinstance(raised.value, zprokit.QueueFull) and raised.value.peer == "sink", raised.value
        assert registered and not left.items, "a window with a full queue was dropped from the registry"
        # and once it reads again (backing off while its queue drains), it is served as before
        answers = []

        def ask() -> bool:
            try:
                answers.append(main.main_call_render("sink", "main", channel="count", timeout=30).result())
            except zprokit.QueueFull:
                return False
            return True

        assert wait_until(ask, 30, interval=0.05) and answers[-1] > 0


def broadcast_stream(count: int, heartbeat: float) -> None:
    with Main("tcp://127.0.0.1:0", heartbeat=heartbeat) as main:
        left = Inbox()
        main.on_window_disconnected(lambda info: left.put(info.name))
        start_windows(main, "slow_sink", "sink", "sink2")
        before = main.stats()["broadcasts"]
        for seq in range(count):
            main.broadcast(seq, topic="flood")
        assert main.stats()["broadcasts"] - before == count
        wait_until(lambda: left.items or all(has(main, n, "broadcast", count) for n in ("sink", "sink2")), DRAIN)
        assert not left.items, f"windows dropped during the stream: {left.items}"
        for name in ("sink", "sink2"):
            received = arrived(main, name, "broadcast", count)
            assert received == list(range(count)), (
                f"{name} got {len(received)} of {count} broadcasts, in order: {in_order(received)}; "
                f"missing e.g. {sorted(set(range(count)) - set(received))[:10]}")


def test_broadcast_stream_arrives_complete_and_in_order():
    broadcast_stream(BROADCASTS, heartbeat=1.0)


def test_a_broadcast_stream_longer_than_the_liveness_limit_drops_no_window():
    # heartbeat 0.2 s, liveness 3: the main drops a window it has not heard from for 0.6 s.
    broadcast_stream(4 * BROADCASTS, heartbeat=0.2)
