"""Small pieces shared by Main and Window."""

from __future__ import annotations

from ._futures import ReplyFuture

DEFAULT_TIMEOUT = 30.0  # seconds; every request has one, so nothing waits forever by default
MAIN_NAME = "main"


def fail(future: ReplyFuture, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def check_channel(channel: str, what: str = "channel") -> None:
    if not isinstance(channel, str):
        raise TypeError(f"{what} must be a str, not {type(channel).__name__}")


def check_timeout(timeout: float) -> float:
    if timeout is None or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)
