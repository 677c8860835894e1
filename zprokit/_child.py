"""The entry point of a window process made by ``create_window``.

Reads its target from the inherited pipe, connects, calls ``target(window)``,
closes the window and exits: 0 if the target returned, 1 if it raised.
SIGTERM closes the window cleanly too. With ``exit_with_main`` (the default)
the window also closes when the process that created it dies, even by
SIGKILL, so no window outlives its main as an orphan.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import signal
import sys
import threading
from typing import Any, Callable, cast

from . import _env

log = logging.getLogger("zprokit.child")


def _read_target() -> Callable[..., Any]:
    fd = int(os.environ.pop(_env.TARGET_FD))
    with os.fdopen(fd, "rb") as pipe:
        blob = pipe.read()
    kind, data = blob[:1], blob[1:]
    if kind == b"P":
        # From our own parent, through a pipe only it holds: as trusted as our own code.
        return cast(Callable[..., Any], pickle.loads(data))
    module, _, func = data.decode().partition(":")
    obj: Any = importlib.import_module(module)
    for part in func.split("."):
        obj = getattr(obj, part)
    return cast(Callable[..., Any], obj)


def _exit_when_orphaned(parent: int, closed: threading.Event) -> None:
    """SIGTERM ourselves (closing the window through ``on_term``) once ``parent`` is gone."""
    while not closed.wait(0.5):
        if os.getppid() != parent:
            log.warning("the main process %s that created this window is gone; exiting", parent)
            os.kill(os.getpid(), signal.SIGTERM)
            return


def main() -> int:
    logging.basicConfig(level=os.environ.get(_env.LOG_LEVEL, "WARNING"), format="%(name)s: %(message)s")
    from .api import init_expose_in_main_world

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        spec = _env.ChildSpec.from_environ(os.environ)
    except ValueError as e:  # not what create_window writes: say so, and fail as a target would
        log.error("window process: a bad environment: %s", e)
        return 1
    exit_with_main = spec.exit_with_main
    finished = threading.Event()
    if exit_with_main:
        # Watched from the start, against the pid our creator gave us: a main that dies
        # while we are still connecting must not leave us behind either.
        parent = spec.parent_pid or os.getppid()
        threading.Thread(target=_exit_when_orphaned, args=(parent, finished), name="zprokit-orphan-watch", daemon=True).start()
    window = None
    try:
        target = _read_target()
        # The process's default window, so the module-level functions (zprokit.render_msg_to_main, ...)
        # work in the target as they do after init_expose_in_main_world.
        window = init_expose_in_main_world(
            serializer=spec.serializer or None,
            exit_with_main=exit_with_main,
            heartbeat=spec.heartbeat,
            liveness=spec.liveness,
            # The main's wait_for_window returns once the target's callbacks are in place: when
            # it waits in wait_closed(), calls window.ready(), or returns.
            ready=False,
            groups=spec.groups,
        )
        target(window)
        window.ready()
    except SystemExit as e:
        return int(e.code or 0)
    except BaseException:
        log.exception("window %r: target raised", spec.name)
        return 1
    finally:
        finished.set()
        if window is not None:
            window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
