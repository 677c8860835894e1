"""The app of the docker-compose demo (see ``docker/``): a main that hands out work, workers that do it.

The compose services run it through the command line::

    zprokit main --bind tcp://0.0.0.0:5555 --pub-bind tcp://0.0.0.0:5556 \\
        --key-file /run/secrets/zprokit_key examples.docker_app:setup
    zprokit window --name "worker-$HOSTNAME" --connect tcp://main:5555 \\
        --key-file /run/secrets/zprokit_key examples.docker_app:worker

Each worker, once it listens on the "square" channel, tells the main it is
ready; the main's handler answers by asking that worker to square the next
number (a request made from inside a handler, waited on there) and prints
the result. The worker then serves the main until its window is closed
(SIGTERM, e.g. ``docker compose stop``; or the main's goodbye, with
``zprokit window --exit-with-main``). Without that flag a worker outlives
its main and rejoins a restarted one under its name.
"""

import itertools
import socket
import sys
import threading


def say(text):
    """Print ``text`` as one write: lines printed by several handler threads never run together."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def setup(main):
    """Register the demo's handlers on ``main`` (a ``zprokit.Main``)."""
    numbers = itertools.count(1)
    lock = threading.Lock()

    @main.on_window_connected
    def connected(info):
        say(f"main: {info.name} connected from {info.address or info.host} (pid {info.pid})")

    @main.on_window_disconnected
    def left(info):
        say(f"main: {info.name} left")

    @main.on_msg_from_render(channel="ready")
    def ready(event, host):
        with lock:
            n = next(numbers)
        squared = main.main_call_render(event.sender, n, channel="square").result(timeout=10)
        say(f"main: {event.sender} (host {host}) squared {n}: {squared}")
        return n


def worker(window):
    """A window target: serve "square" requests until the window is closed."""

    @window.on_msg_from_main(channel="square")
    def square(event, n):
        say(f"{window.name}: squaring {n}")
        return n * n

    n = window.render_msg_to_main(socket.gethostname(), channel="ready").result(timeout=30)
    say(f"{window.name}: ready, and squared {n} for the main")
    window.wait_closed()
