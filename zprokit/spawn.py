"""create_window: start a window process on this machine (a "hidden work window").

The child is ``python -m zprokit._child``. It learns its name, the main's
endpoint and the key from its environment, never from its command line
(which ``ps`` shows to every user), and its target through an inherited
pipe: a cloudpickled callable, or a ``"module:function"`` string.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import threading
from typing import Any, Callable, Iterable, Mapping

import cloudpickle  # type: ignore[import-untyped]

from . import _env
from ._common import check_window_groups

log = logging.getLogger(__name__)

__all__ = ["WindowProcess", "create_window"]


class WindowProcess:
    """A handle on a window process made by ``create_window``."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes]) -> None:
        self.name = name
        self._popen = popen
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once it has ended (negative: killed by that signal), else ``None``."""
        return self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def join(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` s for the process to end; its exit status, or ``None`` if still running."""
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def terminate(self) -> None:
        """Send SIGTERM (the window closes cleanly and exits)."""
        if self.is_alive():
            self._popen.terminate()

    def kill(self) -> None:
        if self.is_alive():
            self._popen.kill()

    def stop(self, grace: float = 3.0) -> int | None:
        """Wait ``grace`` s for a clean exit, then SIGTERM, then SIGKILL: never leaves it behind."""
        with self._lock:
            if self.join(grace) is None:
                log.warning("window process %r (pid %s) still running after %.1f s; terminating", self.name, self.pid, grace)
                self.terminate()
                if self.join(grace) is None:
                    self.kill()
                    self.join(grace)
            return self.returncode

    def __repr__(self) -> str:
        state = "alive" if self.is_alive() else f"exited {self.returncode}"
        return f"<WindowProcess {self.name!r} pid={self.pid} {state}>"


def create_window(
    spec: _env.ChildSpec,
    target: Callable[..., Any] | str,
    *,
    env: Mapping[str, str] | None = None,
    python: str | None = None,
    serializer: str | None = None,
    exit_with_main: bool = True,
    stdout: Any = None,
    stderr: Any = None,
    groups: Iterable[str] = (),
) -> WindowProcess:
    """Start a window process as ``spec`` says (its name, its main, the key) that runs ``target(window)``.

    ``target`` is a callable (cloudpickled, so a lambda or closure works) or
    ``"module:function"``. The child connects to the main at ``spec.endpoint`` with
    the spec's key and serializer (``Main.create_window`` writes the spec), calls ``target`` with its connected ``Window``, and exits when
    ``target`` returns (status 0; 1 if it raised). ``env`` adds environment
    variables; ``python`` picks the interpreter; ``groups``, the worker groups
    its window joins (``Window(groups=...)``). Raises ``TypeError`` for a
    target that is neither, ``ValueError`` for a bad group, before starting anything.
    """
    groups = check_window_groups(groups)
    if isinstance(target, str):
        module, sep, func = target.partition(":")
        if not sep or not module or not func:
            raise ValueError(f"target {target!r} should look like 'package.module:function'")
        blob = b"S" + target.encode()
    elif callable(target):
        blob = b"P" + cloudpickle.dumps(target)
    else:
        raise TypeError(f"target must be a callable or 'module:function', not {type(target).__name__}")

    name = spec.name
    base = dict(os.environ)
    base.update(env or {})
    spec = dataclasses.replace(spec, serializer=serializer or spec.serializer, exit_with_main=exit_with_main,
                               groups=groups)
    child_env = spec.environ(base)
    # The repository or install that imported us must be importable by the child too.
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, child_env.get("PYTHONPATH")) if p)
    read_fd, write_fd = os.pipe()
    child_env[_env.TARGET_FD] = str(read_fd)
    try:
        popen = subprocess.Popen(
            [python or sys.executable, "-m", "zprokit._child"],
            env=child_env,
            pass_fds=(read_fd,),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    with os.fdopen(write_fd, "wb") as pipe:
        try:
            pipe.write(blob)
        except BrokenPipeError:
            log.warning("window process %r exited before reading its target", name)
    log.info("created window process %r (pid %s)", name, popen.pid)
    return WindowProcess(name, popen)

