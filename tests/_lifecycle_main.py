"""A main in its own process, for tests that kill it: ``python _lifecycle_main.py ENDPOINT``.

The key comes from ZPROKIT_KEY. It prints its endpoint on the first line,
then the pid of each window it creates when asked to (``spawn`` channel).
"""

import sys
import threading
import time

import zprokit


def main() -> None:
    m = zprokit.Main(sys.argv[1], heartbeat=0.2)

    @m.on_msg_from_render(channel="sleep")
    def sleep(event, seconds):
        time.sleep(seconds)
        return "slept"

    @m.on_msg_from_render(channel="call_back")
    def call_back(event, msg):
        # proves the window kept its listeners across a restart of the main
        return m.main_call_render(event.sender, msg, channel="echo", timeout=5).result()

    ready = {}

    @m.on_msg_from_render(channel="ready")
    def on_ready(event, name):
        ready.setdefault(name, threading.Event()).set()

    @m.on_msg_from_render(channel="spawn")
    def spawn(event, name):
        handle = m.create_window(name, "_lifecycle_targets:serve")
        if not ready.setdefault(name, threading.Event()).wait(10):
            raise TimeoutError(f"window {name!r} did not get ready")
        return handle.pid

    print(m.endpoint, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
