"""The entry point of a window process made by ``create_window``.

Reads its target from the inherited pipe, connects, calls ``target(window)``,
closes the window and exits: 0 if the target returned, 1 if it raised.
SIGTERM closes the window cleanly too.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import signal
import sys
from typing import Any, Callable

from .spawn import ENV_TARGET_FD

log = logging.getLogger("zprokit.child")


def _read_target() -> Callable[..., Any]:
    fd = int(os.environ.pop(ENV_TARGET_FD))
    with os.fdopen(fd, "rb") as pipe:
        blob = pipe.read()
    kind, data = blob[:1], blob[1:]
    if kind == b"P":
        # From our own parent, through a pipe only it holds: as trusted as our own code.
        return pickle.loads(data)
    module, _, func = data.decode().partition(":")
    obj: Any = importlib.import_module(module)
    for part in func.split("."):
        obj = getattr(obj, part)
    return obj


def main() -> int:
    logging.basicConfig(level=os.environ.get("ZPROKIT_LOG_LEVEL", "WARNING"), format="%(name)s: %(message)s")
    from .window import Window

    target = _read_target()
    window = Window(
        serializer=os.environ.get("ZPROKIT_SERIALIZER") or None,
        exit_with_main=os.environ.get("ZPROKIT_EXIT_WITH_MAIN", "1") == "1",
    )

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        target(window)
    except SystemExit as e:
        return int(e.code or 0)
    except BaseException:
        log.exception("window %r: target raised", window.name)
        return 1
    finally:
        window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
