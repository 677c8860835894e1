"""Window targets for test_flood.py, run in window processes as ``"_flood_targets:<function>"``.

``slow_sink`` is a slow consumer: it remembers every one-way message (from
another window, from the main) and every broadcast, in the order its
callbacks saw them, and sleeps a little every ``SLOW_EVERY`` messages. The
main asks it what arrived. ``source`` floods another window when told to.
"""

import time

SLOW_EVERY = 1000
SLOW_FOR = 0.05  # seconds


def slow_sink(window):
    received = {"render": [], "main": [], "broadcast": []}

    def arrived(kind):
        def on_message(event, msg):
            got = received[kind]
            got.append(msg[0] if isinstance(msg, tuple) else msg)  # a number, or a number and padding
            if len(got) % SLOW_EVERY == 0:
                time.sleep(SLOW_FOR)

        return on_message

    window.on_render_msg_to_render(arrived("render"))
    window.on_msg_from_main(arrived("main"))
    window.on_broadcast(arrived("broadcast"), topic="flood")
    window.on_msg_from_main(lambda event, kind: len(received[kind]), channel="count")
    window.on_msg_from_main(lambda event, kind: list(received[kind]), channel="received")
    window.on_msg_from_main(lambda event, _: window.stats(), channel="stats")
    window.render_msg_to_main(("ready", window.name), channel="report").result(10)
    window.wait_closed()


def source(window):
    """Floods another window when the main says so; answers which messages were acknowledged and which failed."""
    import collections
    from concurrent.futures import wait

    from zprokit import QueueFull

    def flood(event, args):
        target, count, in_flight, timeout = args
        futures = []
        outstanding = collections.deque()
        refused = {}
        for seq in range(count):
            try:
                future = window.render_msg_to_render(target, seq, timeout=timeout)
            except QueueFull as e:  # told at once (the queue to the main is full): failed, not lost
                refused[seq] = repr(e)
                continue
            futures.append((seq, future))
            outstanding.append(future)
            if in_flight is not None and len(outstanding) >= in_flight:
                outstanding.popleft().exception(timeout)
        _, pending = wait([f for _, f in futures], timeout)
        acked = [seq for seq, f in futures if f.done() and f.exception() is None]
        failed = {seq: repr(f.exception()) for seq, f in futures if f.done() and f.exception() is not None}
        failed.update(refused)
        return {"acked": acked, "failed": failed, "pending": len(pending), "stats": window.stats()}

    window.on_msg_from_main(flood, channel="flood")
    window.render_msg_to_main(("ready", window.name), channel="report").result(10)
    window.wait_closed()


def sleepy_sink(window):
    """A consumer whose callbacks sleep 1 ms each: for one-way messages and broadcasts alike.
    Remembers the order of what arrived; answers ``received`` and ``stats``."""
    received = {"main": [], "broadcast": []}

    def arrived(kind):
        def on_message(event, msg):
            received[kind].append(msg[0] if isinstance(msg, tuple) else msg)
            time.sleep(0.001)

        return on_message

    window.on_msg_from_main(arrived("main"))
    window.on_broadcast(arrived("broadcast"), topic="flood")
    window.on_msg_from_main(lambda event, kind: len(received[kind]), channel="count")
    window.on_msg_from_main(lambda event, kind: list(received[kind]), channel="received")
    window.on_msg_from_main(lambda event, _: window.stats(), channel="stats")
    window.wait_closed()
