"""APP and TARGET functions for tests/test_cli.py, run by the zprokit command in other processes."""

from __future__ import annotations

import sys


def say(line: str) -> None:
    """One write per line: processes sharing a stdout (PYTHONUNBUFFERED=1) must not split each other's lines."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def app(main):
    """``zprokit main ... _cli_app:app``: one handler."""
    main.on_msg_from_render(lambda event, n: n + 1, channel="add_one")


def app_with_worker(main):
    """A main that also starts a window process of its own, and says which."""
    app(main)
    worker = main.create_window("worker", "_cli_app:serve")
    main.wait_for_window("worker")
    say(f"worker pid {worker.pid}")


def ask(window):
    """``zprokit window ... _cli_app:ask``: one request, then return (the process exits 0)."""
    say(f"answer: {window.render_msg_to_main(20, channel='add_one').result(5)}")


def serve(window):
    """Stay connected until closed (or signalled)."""
    say("ready")
    window.wait_closed()


def fail(window):
    raise RuntimeError("this target fails on purpose")


def app_liveness(main):
    """``zprokit main ... _cli_app:app_liveness``: say which liveness settings the Main got."""
    say(f"main heartbeat {main.heartbeat} liveness {main.liveness}")


def liveness(window):
    """Say which liveness settings the Window got, and return."""
    say(f"window heartbeat {window.heartbeat} liveness {window.liveness}")
