"""Small pieces shared by Main and Window: argument checks, limits, the fork generation."""

from __future__ import annotations

import math
import os
from typing import Any

from .errors import Closed
from .protocol import check_group_name, check_groups, normalize_name

DEFAULT_TIMEOUT = 30.0  # seconds; every request has one, so nothing waits forever by default
MAX_STR = 0xFFFF  # a channel, topic or name is at most this many bytes of UTF-8 (the header's length field)
# The longest wait handed to a poll or a lock at once: longer (or infinite) waits are made of such
# waits. epoll and zmq_poll take an int of milliseconds, and a lock refuses more than TIMEOUT_MAX.
MAX_WAIT = 3600.0
# ZeroMQ takes heartbeat intervals and timeouts as an int of milliseconds.
MAX_LIVENESS_WINDOW = (2**31 - 1) / 1000


class _Forks:
    """How many times this process's line has forked: a node made in an earlier generation
    belongs to a parent, and its sockets and threads are not this process's to use."""

    generation = 0


def _after_fork_in_child() -> None:
    _Forks.generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def fork_generation() -> int:
    return _Forks.generation


def check_forked(born: int, what: str, pid: int) -> None:
    """Raise ``Closed`` if the node made in fork generation ``born`` (by process ``pid``) is used
    in a forked child: as pyzmq does for a forked context, a clear error at once, not a hang."""
    if _Forks.generation != born:
        raise Closed(
            f"{what} was made in process {pid} and cannot be used in a child forked from it "
            f"(this is process {os.getpid()}); make a new one in the child"
        )


def check_count(value: Any, what: str, unit: str, optional: bool = False) -> Any:
    """A positive whole number of ``unit`` (``None`` too, if ``optional``); else ``ValueError`` at once."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive number of {unit}, got {short(value)}")
    return value


def check_window_groups(groups: Any) -> tuple[str, ...]:
    """The groups a window joins, as given (any iterable of names but a str), in order, each once;
    ``ValueError`` at once if one is not a name (non-empty, no NUL, at most 255 bytes of UTF-8) or
    there are more than 64."""
    if isinstance(groups, (str, bytes)):  # a str is iterable too: "gpu" would join g, p and u
        raise ValueError(f"groups must be a list of group names, not one {type(groups).__name__}: "
                         f"write groups=({short(groups)},)")
    try:
        names = tuple(dict.fromkeys(normalize_name(group) for group in groups))
    except TypeError:
        raise ValueError(f"groups must be a list of group names, got {short(groups)}") from None
    problem = check_groups(names)
    if problem:
        raise ValueError(f"{problem}: {short(names)}")
    return names


def check_group(group: Any) -> str:
    """The name of a group to call (NFC, as windows announce theirs); else ``ValueError`` at once."""
    problem = check_group_name(group)
    if problem:
        raise ValueError(f"{problem}: {short(group)}")
    name: str = group
    return normalize_name(name)


MAX_RETRIES = 2**32 - 1  # the header's count is a u32


def check_retries(retries: Any) -> int:
    """How many times a group call may go to another member: a whole number, 0 or more."""
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise ValueError(f"retries must be a whole number from 0 to {MAX_RETRIES}, got {short(retries)}")
    return retries


def closed_by_failure(description: str, exc: BaseException) -> Closed:
    """The ``Closed`` a pending call (or a handshake) fails with when its node's I/O thread failed."""
    error = Closed(f"{description}: {exc!r}")
    error.__cause__ = exc
    return error




def check_channel(channel: str, what: str = "channel") -> None:
    """A channel or topic is a str of at most 65535 bytes of UTF-8; else ``TypeError``/``ValueError`` at once."""
    if not isinstance(channel, str):
        raise TypeError(f"{what} must be a str, not {type(channel).__name__}")
    if len(channel) > MAX_STR // 4 and len(channel.encode("utf-8", "surrogatepass")) > MAX_STR:
        raise ValueError(f"{what} is longer than {MAX_STR} bytes of UTF-8: {short(channel)}")


_TRANSPORTS = ("tcp://", "ipc://", "inproc://")


def check_endpoint(endpoint: Any, *, bind: bool) -> str:
    """A ZeroMQ endpoint with a transport zprokit uses; else a one-line ``ValueError`` at once.

    Caught here rather than in the I/O thread, where it used to end in a ``Timeout``.
    """
    example = "tcp://127.0.0.1:5555" + (" (port 0: any free port)" if bind else "")
    if not isinstance(endpoint, str) or not endpoint.startswith(_TRANSPORTS):
        raise ValueError(f"endpoint {short(endpoint)} has no known transport: write {example}, "
                         "ipc:///path/to/socket or inproc://name")
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        if not host or not (port == "*" or (port.isdigit() and int(port) < 65536)) or (port in ("0", "*") and not bind):
            raise ValueError(f"endpoint {short(endpoint)} needs a host and a port: write {example}")
    elif endpoint.endswith("://"):
        raise ValueError(f"endpoint {short(endpoint)} names no address: write {example}")
    return endpoint


def short(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to about ``limit`` characters: error messages quote bad values, not whole books."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_timeout(timeout: float | None, what: str = "timeout") -> float:
    """A request timeout in seconds: positive; ``None`` or ``math.inf`` means no limit (``inf``)."""
    if timeout is None:
        return math.inf
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"{what} must be a positive number of seconds (math.inf: no limit), got {short(timeout)}")
    return float(timeout)


def check_interval(interval: float, what: str) -> float:
    """A heartbeat or back-off interval: positive and finite, else ``ValueError`` at construction."""
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 < interval < math.inf:
        raise ValueError(f"{what} must be a positive, finite number of seconds, got {short(interval)}")
    return float(interval)


def check_liveness(heartbeat: float, liveness: int) -> tuple[float, int]:
    """``heartbeat`` and ``liveness`` that can work: a peer silent for ``heartbeat * liveness`` s is dead."""
    heartbeat = check_interval(heartbeat, "heartbeat")
    if isinstance(liveness, bool) or not isinstance(liveness, int) or liveness < 1:
        raise ValueError(f"liveness must be a whole number of heartbeats, at least 1, got {short(liveness)}")
    if heartbeat * liveness > MAX_LIVENESS_WINDOW or heartbeat < 0.001:
        raise ValueError(
            f"heartbeat * liveness must be between 1 ms and {MAX_LIVENESS_WINDOW / 86400:.1f} days "
            f"(ZeroMQ counts it in milliseconds), got {heartbeat} s * {liveness}"
        )
    return heartbeat, liveness


# Expiries handled per timer call: 200,000 calls that time out together must not hold the I/O
# thread for seconds (its heartbeat would starve); the rest follow after the loop's next turn.
