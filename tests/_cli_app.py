"""APP and TARGET functions for tests/test_cli.py, run by the zprokit command in other processes."""

from __future__ import annotations


def app(main):
    """``zprokit main ... _cli_app:app``: one handler."""
    main.on_msg_from_render(lambda event, n: n + 1, channel="add_one")


def app_with_worker(main):
    """A main that also starts a window process of its own, and says which."""
    app(main)
    worker = main.create_window("worker", "_cli_app:serve")
    main.wait_for_window("worker")
    print(f"worker pid {worker.pid}", flush=True)


def ask(window):
    """``zprokit window ... _cli_app:ask``: one request, then return (the process exits 0)."""
    print("answer:", window.render_msg_to_main(20, channel="add_one").result(5), flush=True)


def serve(window):
    """Stay connected until closed (or signalled)."""
    print("ready", flush=True)
    window.wait_closed()


def fail(window):
    raise RuntimeError("this target fails on purpose")
