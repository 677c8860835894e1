"""zprokit's environment variables, all of them, and the child spec that ``create_window`` hands its process.

A node reads ``ZPROKIT_ENDPOINT`` (both), ``ZPROKIT_NAME`` (a window) and
the key variables (``security.resolve_key``) when its arguments leave them
out; the command reads ``ZPROKIT_LOG_LEVEL``; ``ZPROKIT_PURE_PYTHON=1`` runs
the source of the modules Cython compiled (``_compiled``). A window process made by
``create_window`` learns everything else from its environment too (never
from its command line, which ``ps`` shows to every user): ``ChildSpec``
writes that environment in the main and reads it back in the child.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Mapping

__all__ = [
    "PREFIX",
    "ENDPOINT",
    "NAME",
    "KEY",
    "KEY_FILE",
    "KEY_HEX",
    "CURVE_SECRET",
    "CURVE_SERVER",
    "LOG_LEVEL",
    "PURE_PYTHON",
    "ChildSpec",
]

PREFIX = "ZPROKIT_"  # every variable of zprokit's starts with it
ENDPOINT = "ZPROKIT_ENDPOINT"  # the main's ROUTER: where a main binds, where a window connects
NAME = "ZPROKIT_NAME"  # a window's name
KEY = "ZPROKIT_KEY"  # the shared key, as text
KEY_FILE = "ZPROKIT_KEY_FILE"  # a file holding the shared key
KEY_HEX = "ZPROKIT_KEY_HEX"  # the shared key hex-encoded, so any bytes survive (create_window's)
CURVE_SECRET = "ZPROKIT_CURVE_SECRET_KEY"  # a window's CURVE secret key
CURVE_SERVER = "ZPROKIT_CURVE_SERVER_KEY"  # the main's CURVE public key
LOG_LEVEL = "ZPROKIT_LOG_LEVEL"
PURE_PYTHON = "ZPROKIT_PURE_PYTHON"  # "1": import the .py of every compiled module, not its extension
# Only between create_window and its child:
SERIALIZER = "ZPROKIT_SERIALIZER"
EXIT_WITH_MAIN = "ZPROKIT_EXIT_WITH_MAIN"
HEARTBEAT = "ZPROKIT_HEARTBEAT"
LIVENESS = "ZPROKIT_LIVENESS"
PARENT_PID = "ZPROKIT_PARENT_PID"
GROUPS = "ZPROKIT_GROUPS"  # the worker groups it joins, a JSON list
TARGET_FD = "ZPROKIT_TARGET_FD"

_INHERITED_SECRETS = (KEY, KEY_FILE, CURVE_SECRET, CURVE_SERVER)


@dataclass(frozen=True)
class ChildSpec:
    """What a window process made by ``create_window`` needs to join its main."""

    name: str
    endpoint: str
    key: bytes
    serializer: str
    heartbeat: float
    liveness: int
    exit_with_main: bool = True
    curve_secret_key: str | None = None  # its own CURVE keypair's secret, under CURVE
    curve_server_key: str | None = None  # the main's CURVE public key
    parent_pid: int = 0
    groups: tuple[str, ...] = ()  # the worker groups it joins (checked by create_window)

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` (the parent's environment) with the spec written in; keys the parent
        inherited are dropped, so the child gets exactly the main's."""
        env = {k: v for k, v in base.items() if k not in _INHERITED_SECRETS}
        env.update({
            NAME: self.name,
            ENDPOINT: _connectable(self.endpoint),
            KEY_HEX: self.key.hex(),
            SERIALIZER: self.serializer,
            EXIT_WITH_MAIN: "1" if self.exit_with_main else "0",
            HEARTBEAT: repr(self.heartbeat),
            LIVENESS: str(self.liveness),
            PARENT_PID: str(self.parent_pid or os.getpid()),
            GROUPS: json.dumps(list(self.groups)),
        })
        if self.curve_secret_key is not None and self.curve_server_key is not None:
            env.update({CURVE_SECRET: self.curve_secret_key, CURVE_SERVER: self.curve_server_key})
        return env

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> "ChildSpec":
        """The spec a child finds in its environment (the key stays there, for ``resolve_key``)."""
        return cls(
            name=env.get(NAME, ""),
            endpoint=env.get(ENDPOINT, ""),
            key=b"",
            serializer=env.get(SERIALIZER, ""),
            heartbeat=float(env.get(HEARTBEAT, "1.0")),
            liveness=int(env.get(LIVENESS, "3")),
            exit_with_main=env.get(EXIT_WITH_MAIN, "1") == "1",
            parent_pid=int(env.get(PARENT_PID, "0") or 0),
            groups=_group_list(env.get(GROUPS, "[]")),
        )


def _group_list(text: str) -> tuple[str, ...]:
    """``ZPROKIT_GROUPS``: a JSON list of names (``Window`` checks them); else ``ValueError``."""
    groups = json.loads(text)  # a JSONDecodeError is a ValueError
    if not isinstance(groups, list):
        raise ValueError(f"{GROUPS} is not a JSON list")
    return tuple(groups)


def _connectable(endpoint: str) -> str:
    """A bound wildcard address is not one a child can connect to; use loopback."""
    for wildcard in ("tcp://0.0.0.0:", "tcp://*:"):
        if endpoint.startswith(wildcard):
            return "tcp://127.0.0.1:" + endpoint[len(wildcard):]
    if endpoint.startswith("tcp://[::]:"):
        return "tcp://[::1]:" + endpoint[len("tcp://[::]:"):]
    return endpoint
