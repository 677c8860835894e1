"""Window targets for the lifecycle tests (imported by window processes by name)."""

import time


def serve(window):
    """Serve until closed: answers ``echo``, busy-loops on ``spin`` (seconds), sleeps on ``nap``."""
    window.on_msg_from_main(lambda event, msg: msg, channel="echo")
    window.on_msg_from_main(lambda event, seconds: spin(seconds), channel="spin")
    window.on_msg_from_main(lambda event, seconds: time.sleep(seconds), channel="nap")
    window.on_render_msg_to_render(lambda event, seconds: time.sleep(seconds), channel="nap")
    # create_window returns before this target runs: say when the callbacks are in place
    window.render_msg_to_main(window.name, channel="ready", timeout=10).result()
    window.wait_closed()


def spin(seconds):
    """Hold the CPU (pure Python, so the GIL too, in slices) for ``seconds``."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def ask_main_to_spin(window):
    """Ask the main to run a long handler, and report whether we stayed connected."""
    window.ready()  # no callbacks to register: the main's wait_for_window may return now
    result = window.render_msg_to_main(20, channel="spin", timeout=60).result()
    window.render_msg_to_main(result, channel="report", timeout=5).result()
    window.wait_closed()
