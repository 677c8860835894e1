"""Registration plumbing shared by Main and Window: decorator forms and listener lists."""

from __future__ import annotations

import threading
from typing import Any, Callable, TypeVar, overload

# The callback a registration is given, and returns: decorating keeps the function's own type.
# Each registration method is typed with two overloads over it: bare (``on_x(fn)``,
# ``@on_x``) returns ``F``; called (``@on_x(channel="c")``, ``@on_x("c")``) returns a
# decorator, ``Callable[[F], F]``.
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CHANNEL = "default"


@overload
def registrar(register: Callable[..., Any], cb: F, kwargs: dict[str, Any]) -> F: ...


@overload
def registrar(register: Callable[..., Any], cb: str | None, kwargs: dict[str, Any]) -> Callable[[F], F]: ...


def registrar(register: Callable[..., Any], cb: Any, kwargs: dict[str, Any]) -> Any:
    """Let ``register`` be used bare, called, or as a decorator with arguments.

    ``on_x(fn)``, ``@on_x``, ``@on_x(channel="c")`` and ``@on_x("c")`` all work;
    each returns the callback itself.
    """
    if isinstance(cb, str):
        # A positional string names what the registration is keyed by: a channel, or a broadcast topic.
        kwargs = {**kwargs, ("channel" if "channel" in kwargs else "topic"): cb}
        cb = None
    if cb is None:
        def decorate(fn: F) -> F:
            register(fn, **kwargs)
            return fn

        return decorate
    if not callable(cb):
        raise TypeError(f"expected a callable or a channel name, got {type(cb).__name__}")
    register(cb, **kwargs)
    return cb


class Listeners:
    """Callbacks per key, copy-on-write so the I/O thread reads without a lock."""

    def __init__(self) -> None:
        self._by_key: dict[Any, tuple[Callable[..., Any], ...]] = {}
        self._lock = threading.Lock()

    def add(self, key: Any, cb: Callable[..., Any]) -> None:
        with self._lock:
            self._by_key[key] = (*self._by_key.get(key, ()), cb)

    def remove(self, cb: Callable[..., Any], key: Any = None) -> bool:
        """Remove ``cb`` (from ``key`` only, if given); True if it was registered."""
        removed = False
        with self._lock:
            for k in list(self._by_key) if key is None else [key]:
                cbs = self._by_key.get(k, ())
                if cb in cbs:
                    rest = tuple(c for c in cbs if c is not cb and c != cb)
                    if rest:
                        self._by_key[k] = rest
                    else:
                        del self._by_key[k]
                    removed = True
        return removed

    def get(self, key: Any) -> tuple[Callable[..., Any], ...]:
        return self._by_key.get(key, ())

    def items(self) -> list[tuple[Any, tuple[Callable[..., Any], ...]]]:
        return list(self._by_key.items())
