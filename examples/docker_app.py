"""The app of the docker-compose demo (see ``docker/``): a main that hands out work, workers that do it.

The compose services run it through the command line::

    zprokit main --bind tcp://0.0.0.0:5555 --pub-bind tcp://0.0.0.0:5556 \\
        --key-file /run/secrets/zprokit_key examples.docker_app:setup
    zprokit window --name "worker-$HOSTNAME" --group workers --connect tcp://main:5555 \\
        --key-file /run/secrets/zprokit_key examples.docker_app:worker

The workers join the worker group "workers" (``--group``), so the main can
hand a call to whichever of them is least loaded (``call_any``) or ask them
all (``call_all``), and other windows can too (``render_call_any``).

Each worker, once it listens on the "square" channel, tells the main it is
ready; the main's handler answers by asking that worker to square the next
number (a request made from inside a handler, waited on there) and prints
the result. The worker then serves the main until its window is closed
(SIGTERM, e.g. ``docker compose stop``; or the main's goodbye, with
``zprokit window --exit-with-main``). Without that flag a worker outlives
its main and rejoins a restarted one under its name.

``tour`` is a window target that walks the whole API across the hosts of a
running demo (group calls and streams included), printing what each call did::

    docker compose run --rm worker zprokit window --name tour \\
        --connect tcp://main:5555 --key-file /run/secrets/zprokit_key examples.docker_app:tour
"""

import itertools
import socket
import sys
import threading

from zprokit import NoHandler, WindowNotFound

GROUP = "workers"  # the worker group the compose file's workers join (--group workers)


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

    # For the tour (and any window that wants to look around): what the main alone can do.

    @main.on_msg_from_render(channel="workers")
    def workers(event, _):
        """The registry: every connected window's name and address."""
        return {info.name: info.address or info.host for info in main.get_all_windows()}

    @main.on_msg_from_render(channel="relay")
    def relay(event, job):
        """Have the main ask a window to square a number: ``(name, n)`` -> ``n * n``."""
        name, n = job
        info = main.get_window(name)
        if info is None:
            raise WindowNotFound(name)
        squared = main.main_call_render(name, n, channel="square").result(timeout=10)
        say(f"main: asked {name} at {info.address or info.host} for {event.sender}: {n} squared is {squared}")
        return squared

    @main.on_msg_from_render(channel="tell")
    def tell(event, job):
        """Pass a one-way note from the main to a window: ``(name, text)``."""
        name, text = job
        main.main_msg_to_render(name, f"{text} (from {event.sender}, through the main)")

    @main.on_msg_from_render(channel="announce")
    def announce(event, text):
        """Broadcast ``text`` on the "news" topic; returns how many windows are connected."""
        main.broadcast(f"{text} (from {event.sender})", topic="news")
        return len(main.get_all_windows())

    @main.on_msg_from_render(channel="census")
    def census(event, n):
        """Have every member of the group square ``n`` (``call_all``): ``{name: n * n}``."""
        return main.call_all(n, group=GROUP, channel="square", timeout=10).result()

    @main.on_msg_from_render(channel="squares")
    def squares(event, numbers):
        """Stream ``(n, n * n)`` for each of ``numbers`` (a generator: it streams), each squared by the
        least-loaded member of the group (``call_any``; another if that one is lost with the call)."""
        for n in numbers:
            yield n, main.call_any(GROUP, n, channel="square", retries=1, timeout=10).result()

    @main.on_msg_from_render(channel="goodbye")
    def goodbye(event, _):
        """Close the asking window, as ``destroy_window`` closes any: it asks the window to close."""
        return main.destroy_window(event.sender)


def worker(window):
    """A window target: serve "square" requests (from the main or other windows) until the window is closed."""

    @window.on_msg_from_main(channel="square")
    def square(event, n):
        say(f"{window.name}: squaring {n}" + ("" if event.sender == "main" else f" for {event.sender}"))
        return n * n

    window.on_render_msg_to_render(square, channel="square")

    @window.on_render_msg_to_render(channel="ask")
    def ask(event, job):
        """Ask another window to square a number, window to window: ``(name, n)``."""
        other, n = job
        return window.render_call_render(other, n, channel="square").result(timeout=10)

    @window.on_render_msg_to_render(channel="countdown")
    def countdown(event, start):
        """Stream ``start, start - 1, ..., 1`` to the asking window (a generator: it streams)."""
        say(f"{window.name}: counting down from {start} for {event.sender}")
        yield from range(start, 0, -1)

    @window.on_msg_from_main
    def note_from_main(event, text):
        say(f"{window.name}: note from the main: {text}")

    @window.on_render_msg_to_render
    def note(event, text):
        say(f"{window.name}: note from {event.sender}: {text}")

    @window.on_broadcast(topic="news")
    def news(event, text):
        say(f"{window.name}: news: {text}")

    n = window.render_msg_to_main(socket.gethostname(), channel="ready").result(timeout=30)
    say(f"{window.name}: ready, and squared {n} for the main")
    window.wait_closed()


def tour(window):
    """A window target: every API call once, across the hosts of a running demo, with a transcript.

    It finds the workers in the main's registry, has the main call each one
    (``main_call_render``) and send it a note (``main_msg_to_render``), calls
    and notes each one itself (window to window) and takes a stream from it,
    has one worker call another, calls the worker group (``render_call_any``;
    the main's ``call_all``; a stream from the main whose items the main has
    the group compute with ``call_any``), asks the main for a broadcast, tries a
    missing window and a missing handler, and last asks the main to close it
    (``destroy_window``).
    """
    me = window.name
    news = threading.Event()

    @window.on_broadcast(topic="news")
    def on_news(event, text):
        say(f"{me}: broadcast on {event.topic!r}: {text}")
        news.set()

    registry = window.render_msg_to_main(None, channel="workers").result(timeout=10)
    say(f"{me}: the main has {len(registry)} windows: " + ", ".join(f"{n} ({a})" for n, a in sorted(registry.items())))
    workers = []
    for name in sorted(set(registry) - {me}):
        try:
            squared = window.render_call_render(name, 8, channel="square").result(timeout=10)
        except NoHandler:
            say(f"{me}: {name} is not a worker (NoHandler)")
            continue
        workers.append(name)
        say(f"{me}: {name} squared 8 for me, window to window: {squared}")
        window.render_msg_to_render(name, f"hello from {me}").result(timeout=10)
        say(f"{me}: note delivered to {name}, window to window")
        squared = window.render_msg_to_main((name, 7), channel="relay").result(timeout=10)
        say(f"{me}: the main asked {name} to square 7: {squared}")
        window.render_msg_to_main((name, f"hello from {me}"), channel="tell").result(timeout=10)
        say(f"{me}: the main passed a note to {name}")
        with window.render_stream_from_render(name, 3, channel="countdown", timeout=10) as stream:
            say(f"{me}: {name} streamed {', '.join(map(str, stream))} to me, window to window")
    for asker, other in zip(workers, workers[1:] + workers[:1]):
        if asker != other:
            squared = window.render_call_render(asker, (other, 9), channel="ask").result(timeout=10)
            say(f"{me}: {asker} asked {other} to square 9: {squared}")
    try:
        squared = window.render_call_any(GROUP, 6, channel="square", retries=1).result(timeout=10)
    except WindowNotFound as e:
        say(f"{me}: {type(e).__name__}: {e} (start the workers with --group {GROUP})")
    else:
        say(f"{me}: one of group {GROUP!r}, picked by the main (render_call_any), squared 6: {squared}")
        every = window.render_msg_to_main(5, channel="census").result(timeout=10)
        say(f"{me}: the main asked all of group {GROUP!r} (call_all) to square 5: "
            + ", ".join(f"{name} {value}" for name, value in sorted(every.items())))
        with window.render_stream_from_main([11, 12, 13, 14], channel="squares", timeout=10) as stream:
            say(f"{me}: streamed from the main, each squared by one of group {GROUP!r} (call_any): "
                + ", ".join(f"{n} -> {value}" for n, value in stream))
    count = window.render_msg_to_main("hello, everyone", channel="announce").result(timeout=10)
    say(f"{me}: the main broadcast to {count} windows" + ("" if news.wait(10) else "; none reached me"))
    try:
        window.render_msg_to_render("worker-nobody", "anyone?").result(timeout=10)
    except WindowNotFound as e:
        say(f"{me}: {type(e).__name__}: {e}")
    try:
        window.render_msg_to_main(None, channel="no-such-channel").result(timeout=10)
    except NoHandler as e:
        say(f"{me}: {type(e).__name__}: {e}")
    say(f"{me}: {len(workers)} workers toured; asking the main to close this window")
    window.render_msg_to_main(None, channel="goodbye")
    if window.wait_closed(10):
        say(f"{me}: closed by the main")
