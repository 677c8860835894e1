"""create_window: start a window process on this machine (a "hidden work window").

The child is ``python -m zprokit._child``. It learns its name, the main's
endpoint and the key from its environment, never from its command line
(which ``ps`` shows to every user), and its target through an inherited
pipe: a cloudpickled callable, or a ``"module:function"`` string.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Mapping

import cloudpickle  # type: ignore[import-untyped]
import zmq

from .security import ENV_CURVE_SECRET, ENV_CURVE_SERVER, ENV_KEY, ENV_KEY_FILE, ENV_KEY_HEX

if TYPE_CHECKING:
    from .main import Main

log = logging.getLogger(__name__)

__all__ = ["WindowProcess", "create_window"]

ENV_TARGET_FD = "ZPROKIT_TARGET_FD"
ENV_PARENT_PID = "ZPROKIT_PARENT_PID"


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
    main: "Main",
    name: str,
    target: Callable[..., Any] | str,
    *,
    env: Mapping[str, str] | None = None,
    python: str | None = None,
    serializer: str | None = None,
    exit_with_main: bool = True,
    stdout: Any = None,
    stderr: Any = None,
) -> WindowProcess:
    """Start a window process called ``name`` that runs ``target(window)``.

    ``target`` is a callable (cloudpickled, so a lambda or closure works) or
    ``"module:function"``. The child connects to ``main`` with its key and
    serializer, calls ``target`` with its connected ``Window``, and exits when
    ``target`` returns (status 0; 1 if it raised). ``env`` adds environment
    variables; ``python`` picks the interpreter. Raises ``TypeError`` for a
    target that is neither.
    """
    if isinstance(target, str):
        module, sep, func = target.partition(":")
        if not sep or not module or not func:
            raise ValueError(f"target {target!r} should look like 'package.module:function'")
        blob = b"S" + target.encode()
    elif callable(target):
        blob = b"P" + cloudpickle.dumps(target)
    else:
        raise TypeError(f"target must be a callable or 'module:function', not {type(target).__name__}")

    child_env = dict(os.environ)
    child_env.update(env or {})
    for inherited in (ENV_KEY, ENV_KEY_FILE, ENV_CURVE_SECRET, ENV_CURVE_SERVER):
        child_env.pop(inherited, None)
    if main.curve_public_key is not None:
        # Under CURVE the child gets a keypair of its own, on the allow-list under its name only.
        public, secret = zmq.curve_keypair()
        main._allow_curve_key(name, public)
        child_env.update({ENV_CURVE_SECRET: secret.decode(), ENV_CURVE_SERVER: main.curve_public_key.decode()})
    child_env.update(
        {
            "ZPROKIT_NAME": name,
            "ZPROKIT_ENDPOINT": _connectable(main.endpoint),
            ENV_KEY_HEX: main.key.hex(),
            "ZPROKIT_SERIALIZER": serializer or main.serializer.name,
            "ZPROKIT_EXIT_WITH_MAIN": "1" if exit_with_main else "0",
            "ZPROKIT_HEARTBEAT": repr(main.heartbeat),
            "ZPROKIT_LIVENESS": str(main.liveness),
            ENV_PARENT_PID: str(os.getpid()),
        }
    )
    # The repository or install that imported us must be importable by the child too.
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, child_env.get("PYTHONPATH")) if p)
    read_fd, write_fd = os.pipe()
    child_env[ENV_TARGET_FD] = str(read_fd)
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


def _connectable(endpoint: str) -> str:
    """A bound wildcard address is not one a child can connect to; use loopback."""
    for wildcard in ("tcp://0.0.0.0:", "tcp://*:"):
        if endpoint.startswith(wildcard):
            return "tcp://127.0.0.1:" + endpoint[len(wildcard):]
    if endpoint.startswith("tcp://[::]:"):
        return "tcp://[::1]:" + endpoint[len("tcp://[::]:"):]
    return endpoint
