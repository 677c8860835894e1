"""Window targets for test_processes.py, run in window processes as ``"_targets:<function>"``.

Each reports to the main on its ``report`` channel (a request, so a report
is known to have arrived before the next one is sent).
"""

import os


def returns(window):
    """Say hello, then return: the process exits with status 0."""
    window.render_msg_to_main(("hello", os.getpid()), channel="report").result(10)


def raises(window):
    """Raise: the process exits with status 1."""
    window.render_msg_to_main(("about to raise", os.getpid()), channel="report").result(10)
    raise RuntimeError("target failed on purpose")


def serve(window):
    """Answer ``environ`` with this process's view of its environment; run until closed."""
    window.on_msg_from_main(lambda event, keys: {k: os.environ.get(k) for k in keys}, channel="environ")
    window.render_msg_to_main(("ready", os.getpid()), channel="report").result(10)
    window.wait_closed()


def stubborn(window):
    """Ignore being closed: run until the process is ended from outside."""
    import threading

    window.render_msg_to_main(("ready", os.getpid()), channel="report").result(10)
    threading.Event().wait()


def peer(window):
    """One of two peer windows: every direction of the API, driven by the main."""
    name = window.name

    def report(*what):
        window.render_msg_to_main(what, channel="report").result(10)

    # main -> render
    window.on_msg_from_main(lambda event, msg: ("pong", name, os.getpid(), event.sender, msg), channel="ping")
    window.on_msg_from_main(lambda event, msg: report("told", name, event.sender, msg), channel="tell")
    # render -> main, with a reply
    window.on_msg_from_main(lambda event, n: window.render_msg_to_main(n, channel="double").result(10), channel="ask_main")
    # render -> render, asked for by the main
    window.on_msg_from_main(
        lambda event, other: window.render_call_render(other, (name, 2, 3), channel="add").result(10), channel="call_peer"
    )
    window.on_msg_from_main(
        lambda event, other: window.render_msg_to_render(other, f"hi from {name}", channel="note").result(10),
        channel="note_peer",
    )
    window.on_render_msg_to_render(lambda event, msg: (name, event.sender, msg[1] + msg[2]), channel="add")
    window.on_render_msg_to_render(lambda event, msg: report("note", name, event.sender, msg), channel="note")
    # broadcasts
    window.on_broadcast(lambda event, msg: report("broadcast", name, event.topic, msg), topic="news")

    report("ready", name, os.getpid())
    window.wait_closed()


def slow_to_set_up(window):
    """Take a moment (imports, a model to load) before registering callbacks, then serve."""
    import time

    time.sleep(1.0)
    window.on_msg_from_main(lambda event, n: n * 3, channel="triple")
    window.on_render_msg_to_render(lambda event, msg: msg, channel="echo")
    window.wait_closed()  # first wait: the main's wait_for_window returns now


def ready_then_work(window):
    """Say ready explicitly, then keep working without waiting in wait_closed()."""
    import threading

    done = threading.Event()
    window.on_msg_from_main(lambda event, _: done.set() or "done", channel="finish")
    window.ready()
    done.wait(30)


def streamer(window):
    """A streaming callback (``count``: 0, 1, ... forever, as credit allows); run until closed."""

    @window.on_msg_from_main(channel="count")
    def count(event, start):
        n = start
        while True:
            yield n
            n += 1

    window.wait_closed()


def group_member(window):
    """A member of a worker group (create_window(..., groups=...)). ``stall``: the member the call
    names reports that it has the call and never answers (the test kills it), any other answers
    with its own name; ``hold`` waits until its caller gives up."""
    import threading

    def stall(event, victim):
        if victim == window.name:
            window.render_msg_to_main(("stalled", window.name, os.getpid()), channel="report").result(10)
            threading.Event().wait()
        return window.name

    window.on_msg_from_main(stall, channel="stall")
    window.on_msg_from_main(lambda event, _: event.cancelled.wait(60), channel="hold")
    window.wait_closed()


def patient(window):
    """``patient``: waits until its caller gives up, then reports whether it was told."""

    @window.on_msg_from_main(channel="patient")
    def wait_for_cancel(event, _):
        window.render_msg_to_main(("started", event.deadline is not None), channel="report").result(10)
        told = event.cancelled.wait(30)
        window.render_msg_to_main(("cancelled", told), channel="report").result(10)

    window.wait_closed()
