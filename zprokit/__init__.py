"""zprokit: electron-prokit's IPC API for Python processes, over ZeroMQ.

A main binds; windows (worker processes, here or on other hosts) connect by
name. See ``README.md`` for a tour and ``zprokit.Main`` / ``zprokit.Window``
for the objects behind the module-level functions. ``build_mode()`` says
whether the hot path runs compiled (Cython) or as pure Python.
"""

from __future__ import annotations

# First, before any of the modules Cython may have compiled is imported: the finder that imports
# their source instead under ZPROKIT_PURE_PYTHON=1, or when a build is older than its source.
from . import _compiled

_compiled.install()

from ._compiled import build_mode
from ._requests import ReplyFuture
from ._streams import ReplyStream
from .api import (
    broadcast,
    call_all,
    call_any,
    create_window,
    destroy_window,
    get_all_windows,
    get_main,
    get_render,
    get_window,
    has_window,
    init_expose_in_main_world,
    init_ipc,
    main_call_render,
    main_msg_to_render,
    main_stream_from_render,
    off_broadcast,
    off_msg_from_main,
    off_msg_from_render,
    off_render_msg_to_render,
    on_broadcast,
    on_msg_from_main,
    on_msg_from_other_render,
    on_msg_from_render,
    on_render_msg_to_render,
    on_window_connected,
    on_window_disconnected,
    render_call_any,
    render_call_render,
    render_msg_to_main,
    render_msg_to_render,
    render_stream_from_main,
    render_stream_from_render,
    send_msg_to_main,
    send_msg_to_other_render,
    send_msg_to_render,
    wait_for_window,
)
from .errors import (
    AuthenticationError,
    Closed,
    NameInUse,
    NoHandler,
    PeerLost,
    ProtocolError,
    QueueFull,
    MessageTooLarge,
    RemoteError,
    Timeout,
    WindowNotFound,
    ZprokitError,
)
from .events import Event, WindowInfo
from .main import Main
from .security import generate_key
from .spawn import WindowProcess
from .window import Window

__version__ = "0.1.0"

__all__ = [
    # objects
    "Main",
    "Window",
    "Event",
    "WindowInfo",
    "WindowProcess",
    "ReplyFuture",
    "ReplyStream",
    # main process
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
    "main_stream_from_render",
    # window process
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
    "render_stream_from_main",
    "render_stream_from_render",
    # electron-prokit's newer names
    "send_msg_to_render",
    "send_msg_to_main",
    "send_msg_to_other_render",
    "on_msg_from_other_render",
    # errors
    "ZprokitError",
    "WindowNotFound",
    "NoHandler",
    "RemoteError",
    "Timeout",
    "PeerLost",
    "NameInUse",
    "AuthenticationError",
    "ProtocolError",
    "QueueFull",
    "MessageTooLarge",
    "Closed",
    # keys
    "generate_key",
    # the build
    "build_mode",
    "__version__",
]
