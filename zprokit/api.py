"""The module-level functions: electron-prokit's IPC API over one default Main or Window.

``init_ipc`` makes the process's default ``Main`` and
``init_expose_in_main_world`` its default ``Window``; every other function
here acts on that instance. Code that needs several nodes in one process
(tests, a window that is also a main) uses the classes directly.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, overload

from ._callbacks import DEFAULT_CHANNEL, F
from ._requests import ReplyFuture
from ._streams import DEFAULT_PREFETCH, ReplyStream
from .errors import ZprokitError
from .events import WindowInfo
from .main import Main
from .spawn import WindowProcess
from .window import Window

__all__ = [
    "init_ipc",
    "get_main",
    "on_msg_from_render",
    "off_msg_from_render",
    "main_msg_to_render",
    "main_call_render",
    "call_any",
    "call_all",
    "broadcast",
    "create_window",
    "get_window",
    "has_window",
    "get_all_windows",
    "wait_for_window",
    "destroy_window",
    "on_window_connected",
    "on_window_disconnected",
    "init_expose_in_main_world",
    "get_render",
    "render_msg_to_main",
    "on_msg_from_main",
    "off_msg_from_main",
    "render_msg_to_render",
    "on_render_msg_to_render",
    "off_render_msg_to_render",
    "render_call_render",
    "render_call_any",
    "on_broadcast",
    "off_broadcast",
    "send_msg_to_render",
    "send_msg_to_main",
    "send_msg_to_other_render",
    "on_msg_from_other_render",
    "main_stream_from_render",
    "render_stream_from_main",
    "render_stream_from_render",
]

_lock = threading.Lock()
_main: Main | None = None
_window: Window | None = None


def init_ipc(endpoint: str | None = None, **options: Any) -> Main:
    """Bind the process's default ``Main`` (see ``zprokit.Main`` for the options) and return it.

    May be called again once the previous default main is closed (a restart,
    on the same endpoint or another). Raises ``ZprokitError`` while one is open.
    """
    global _main
    with _lock:
        if _main is not None and not _main.closed:
            raise ZprokitError(f"init_ipc was already called ({_main.endpoint}); close() that main first")
        _main = Main(endpoint, **options)
        return _main


def get_main() -> Main:
    """The default main; raises ``ZprokitError`` before ``init_ipc``."""
    if _main is None or _main.closed:
        raise ZprokitError("no main in this process: call zprokit.init_ipc() first")
    return _main


def init_expose_in_main_world(name: str | None = None, endpoint: str | None = None, **options: Any) -> Window:
    """Connect the process's default ``Window`` (see ``zprokit.Window``) and return it.

    Returns only when requests and broadcasts both flow. Raises
    ``AuthenticationError``, ``NameInUse``, ``Timeout`` or ``ProtocolError``
    (see ``Window``); ``ZprokitError`` while a default window is open.
    """
    global _window
    with _lock:
        if _window is not None and not _window.closed:
            raise ZprokitError(f"init_expose_in_main_world was already called (window {_window.name!r})")
        _window = Window(name, endpoint, **options)
        return _window


def get_render() -> Window:
    """The default window; raises ``ZprokitError`` before ``init_expose_in_main_world``."""
    if _window is None or _window.closed:
        raise ZprokitError("no window in this process: call zprokit.init_expose_in_main_world() first")
    return _window


# --- main process -------------------------------------------------------------------


@overload
def on_msg_from_render(handler: F, channel: str = ..., *, replace: bool = ..., inline: bool = ...) -> F: ...


@overload
def on_msg_from_render(
    handler: str | None = ..., channel: str = ..., *, replace: bool = ..., inline: bool = ...
) -> Callable[[F], F]: ...


def on_msg_from_render(handler: Any = None, channel: str = DEFAULT_CHANNEL, **options: Any) -> Any:
    """``Main.on_msg_from_render`` on the default main: the handler's return value is the reply."""
    return get_main().on_msg_from_render(handler, channel, **options)


def off_msg_from_render(channel: str = DEFAULT_CHANNEL) -> bool:
    return get_main().off_msg_from_render(channel)


def main_msg_to_render(name: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None) -> None:
    """``Main.main_msg_to_render``: one-way; ``WindowNotFound`` at once for an unknown name."""
    get_main().main_msg_to_render(name, msg, channel=channel, timeout=timeout)


def main_call_render(
    name: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None
) -> ReplyFuture[Any]:
    return get_main().main_call_render(name, msg, channel=channel, timeout=timeout)


def call_any(
    group: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None, retries: int = 0
) -> ReplyFuture[Any]:
    """``Main.call_any``: one member of worker group ``group``, the least loaded; ``WindowNotFound`` at once if none."""
    return get_main().call_any(group, msg, channel=channel, timeout=timeout, retries=retries)


def call_all(
    msg: Any, *, group: str | None = None, channel: str = DEFAULT_CHANNEL, timeout: float | None = None
) -> ReplyFuture[dict[str, Any]]:
    """``Main.call_all``: every member of ``group`` (every window for None); ``{name: result or exception}``."""
    return get_main().call_all(msg, group=group, channel=channel, timeout=timeout)


def broadcast(msg: Any, *, topic: str = "", timeout: float | None = None) -> None:
    """``Main.broadcast``: to every window whose ``on_broadcast`` topic is a prefix of ``topic``."""
    get_main().broadcast(msg, topic=topic, timeout=timeout)


def create_window(name: str, target: Any, **options: Any) -> WindowProcess:
    """``Main.create_window``: start a local window process running ``target(window)``."""
    return get_main().create_window(name, target, **options)


def get_window(name: str) -> WindowInfo | None:
    return get_main().get_window(name)


def has_window(name: str) -> bool:
    return get_main().has_window(name)


def get_all_windows() -> list[WindowInfo]:
    return get_main().get_all_windows()


def wait_for_window(name: str, timeout: float | None = 10.0) -> WindowInfo:
    """``Main.wait_for_window``: block until window ``name`` is connected and ready."""
    return get_main().wait_for_window(name, timeout)


def destroy_window(name: str, **options: Any) -> bool:
    return get_main().destroy_window(name, **options)


def on_window_connected(cb: Callable[[WindowInfo], Any]) -> Callable[[WindowInfo], Any]:
    return get_main().on_window_connected(cb)


def on_window_disconnected(cb: Callable[[WindowInfo], Any]) -> Callable[[WindowInfo], Any]:
    return get_main().on_window_disconnected(cb)


# --- window process -----------------------------------------------------------------


def render_msg_to_main(msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None) -> ReplyFuture[Any]:
    """``Window.render_msg_to_main`` on the default window: a future of the main's reply."""
    return get_render().render_msg_to_main(msg, channel=channel, timeout=timeout)


@overload
def on_msg_from_main(cb: F, channel: str = ...) -> F: ...


@overload
def on_msg_from_main(cb: str | None = ..., channel: str = ...) -> Callable[[F], F]: ...


def on_msg_from_main(cb: Any = None, channel: str = DEFAULT_CHANNEL) -> Any:
    return get_render().on_msg_from_main(cb, channel)


def off_msg_from_main(cb: Callable[..., Any], channel: str | None = None) -> bool:
    return get_render().off_msg_from_main(cb, channel)


def render_msg_to_render(
    name: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None
) -> ReplyFuture[None]:
    return get_render().render_msg_to_render(name, msg, channel=channel, timeout=timeout)


@overload
def on_render_msg_to_render(cb: F, channel: str = ...) -> F: ...


@overload
def on_render_msg_to_render(cb: str | None = ..., channel: str = ...) -> Callable[[F], F]: ...


def on_render_msg_to_render(cb: Any = None, channel: str = DEFAULT_CHANNEL) -> Any:
    return get_render().on_render_msg_to_render(cb, channel)


def off_render_msg_to_render(cb: Callable[..., Any], channel: str | None = None) -> bool:
    return get_render().off_render_msg_to_render(cb, channel)


def render_call_render(
    name: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None
) -> ReplyFuture[Any]:
    return get_render().render_call_render(name, msg, channel=channel, timeout=timeout)


def render_call_any(
    group: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None, retries: int = 0
) -> ReplyFuture[Any]:
    """``Window.render_call_any``: one member of worker group ``group``, picked by the main."""
    return get_render().render_call_any(group, msg, channel=channel, timeout=timeout, retries=retries)


@overload
def on_broadcast(cb: F, *, topic: str = ...) -> F: ...


@overload
def on_broadcast(cb: str | None = ..., *, topic: str = ...) -> Callable[[F], F]: ...


def on_broadcast(cb: Any = None, *, topic: str = "") -> Any:
    return get_render().on_broadcast(cb, topic=topic)


def off_broadcast(cb: Callable[..., Any], topic: str | None = None) -> bool:
    return get_render().off_broadcast(cb, topic)


# electron-prokit's newer names
send_msg_to_render = main_msg_to_render
send_msg_to_main = render_msg_to_main
send_msg_to_other_render = render_msg_to_render
on_msg_from_other_render = on_render_msg_to_render


def main_stream_from_render(
    name: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None,
    prefetch: int = DEFAULT_PREFETCH,
) -> ReplyStream[Any]:
    """``Main.main_stream_from_render`` on the default main: window ``name``'s streaming callback."""
    return get_main().main_stream_from_render(name, msg, channel=channel, timeout=timeout, prefetch=prefetch)


def render_stream_from_main(
    msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None, prefetch: int = DEFAULT_PREFETCH,
) -> ReplyStream[Any]:
    """``Window.render_stream_from_main`` on the default window: the main's streaming handler."""
    return get_render().render_stream_from_main(msg, channel=channel, timeout=timeout, prefetch=prefetch)


def render_stream_from_render(
    name: str, msg: Any, *, channel: str = DEFAULT_CHANNEL, timeout: float | None = None,
    prefetch: int = DEFAULT_PREFETCH,
) -> ReplyStream[Any]:
    """``Window.render_stream_from_render`` on the default window: window ``name``'s streaming callback."""
    return get_render().render_stream_from_render(name, msg, channel=channel, timeout=timeout, prefetch=prefetch)
