"""A window target for tests/test_netns.py: the test's hands on a host of its own.

``zprokit window ... _netns_targets:driver`` reads API calls on stdin, one
JSON object a line, makes them on its window without waiting for one to end
before the next, and prints each outcome as a JSON line when it comes::

    {"id": 1, "call": "render_call_render", "args": ["worker-w1", 3], "kwargs": {"channel": "square"}}
    -> {"id": 1, "result": 9}
    -> {"id": 1, "error": "RemoteError", "remote_type": "zprokit.errors.PeerLost", "message": "..."}

A call that returns a value rather than a future (``stats``) is answered at
once with it. Every broadcast the window receives is printed as
``{"broadcast": message, "topic": topic}``. It prints ``{"ready": name}``
once listening, and ends at the end of stdin.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

_out = threading.Lock()


def emit(obj: dict[str, Any]) -> None:
    with _out:
        sys.stdout.write(json.dumps(obj, default=repr) + "\n")
        sys.stdout.flush()


def _outcome(request_id: int, future: Any) -> None:
    error = future.exception()
    if error is None:
        emit({"id": request_id, "result": future.result()})
    else:
        emit({"id": request_id, "error": type(error).__name__, "remote_type": getattr(error, "remote_type", None),
              "message": str(error).splitlines()[0]})


def driver(window: Any) -> None:
    window.on_broadcast(lambda event, msg: emit({"broadcast": msg, "topic": event.topic}))
    emit({"ready": window.name})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            future = getattr(window, request["call"])(*request.get("args", ()), **request.get("kwargs", {}))
        except Exception as e:  # raised at once (WindowNotFound, Closed, ...): an outcome like any other
            emit({"id": request["id"], "error": type(e).__name__, "remote_type": None, "message": str(e)})
            continue
        if not hasattr(future, "add_done_callback"):  # a plain value (stats(), ...): the result now
            emit({"id": request["id"], "result": future})
            continue
        future.add_done_callback(lambda f, request_id=request["id"]: _outcome(request_id, f))
