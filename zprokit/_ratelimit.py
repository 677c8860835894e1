"""Rate-limited warnings, so a flood of bad input cannot fill the disk with log lines."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, cast

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Log at most one record per key every ``interval`` seconds; say how many were held back.

    ``warning("bad_signature", "main dropped a message: %s", detail)`` logs at
    once the first time, then stays quiet for that key until ``interval``
    seconds have passed; the next record it lets through ends with
    ``(N more suppressed)``. Keys are few (rejection reasons), so the memory
    is bounded by the code, not by the input. Thread-safe.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self.interval = interval
        self._clock = clock
        self._state: dict[str, tuple[float, int]] = {}  # key -> (when last logged, suppressed since)
        self._lock = threading.Lock()

    def log(self, level: int, key: str, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` was logged within ``interval`` s; True if logged."""
        if not self._log.isEnabledFor(level):
            return False
        now = self._clock()
        with self._lock:
            last, suppressed = self._state.get(key, (None, 0))
            if last is not None and now - last < self.interval:
                self._state[key] = (last, suppressed + 1)
                return False
            self._state[key] = (now, 0)
        if suppressed:
            msg += " (%d more like it suppressed in the last %.0f s)"
            args = (*args, suppressed, now - cast(float, last))  # suppressed: last is set
        self._log.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, key, msg, *args)
