"""The peers' servers for ``zprokit bench --peers``: one echo each, one ``serve_peer_*`` per ``--serve KIND``.

Like the programs of ``_children`` (whose JSON-lines helpers they use),
each runs as ``python -m zprokit.bench --serve KIND PARAMS``, says
``ready`` with its address, serves until its stdin closes, and binds
127.0.0.1 on a port the system picks. Each imports its library when it
runs, by name (``importlib``): none of them is a dependency of zprokit, and
this module loads without them. Raw pyzmq and zprokit use the benchmark's
own ``raw-echo`` and ``zp-main``.

Each echo is given its best ordinary set-up for bytes (the reasons are in
``_peers``, beside each client): the library's own server, a single handler
that returns its argument, no option that changes the work per call except
where the default cannot carry a 64 MiB payload or bytes.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import os
import socket
import threading
import time
from typing import Any, Callable

from .. import _env
from ._children import _commands, _say
from ._common import CHILD_TIMEOUT

GRPC_SERVICE = "zprokit.bench.Echo"
GRPC_METHOD = f"/{GRPC_SERVICE}/Echo"
GRPC_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]  # default: 4 MiB
GRPC_WORKERS = 4  # the server's thread pool
PYRO5_OBJECT = "zprokit.bench.echo"


def _in_background(target: Callable[[], Any], name: str) -> None:
    """Run ``target`` (a server's loop) on a daemon thread: the process ends when its stdin closes."""
    threading.Thread(target=target, name=name, daemon=True).start()


def _key() -> bytes:
    return os.environ[_env.KEY].encode()


def serve_peer_mp() -> None:
    """``multiprocessing.connection``: a ``Listener`` on TCP (the bench's key as its ``authkey``), one
    connection at a time, ``send_bytes`` of what ``recv_bytes`` gave."""
    from multiprocessing.connection import Listener

    listener = Listener(("127.0.0.1", 0), family="AF_INET", authkey=_key())

    def serve() -> None:
        while True:
            try:
                conn = listener.accept()
            except OSError:  # closed
                return
            with conn:
                while True:
                    try:
                        conn.send_bytes(conn.recv_bytes())
                    except (EOFError, OSError):
                        break

    _in_background(serve, "peer-mp")
    host, port = listener.address
    _say("ready", host=host, port=port)
    _commands()
    listener.close()


def serve_peer_pyro5() -> None:
    """Pyro5: a ``Daemon`` (its default thread-pool server) with one exposed object."""
    api = importlib.import_module("Pyro5.api")

    class Echo:
        def echo(self, payload: Any) -> Any:
            return payload

    daemon = api.Daemon(host="127.0.0.1", port=0)
    uri = daemon.register(api.expose(Echo)(), PYRO5_OBJECT)
    _in_background(daemon.requestLoop, "peer-pyro5")
    _say("ready", uri=str(uri))
    _commands()
    daemon.shutdown()


def serve_peer_rpyc() -> None:
    """RPyC: a ``ThreadedServer`` (a thread per connection) with a service exposing ``echo``."""
    rpyc = importlib.import_module("rpyc")
    servers = importlib.import_module("rpyc.utils.server")
    service = type("EchoService", (rpyc.Service,), {"exposed_echo": lambda self, payload: payload})
    server = servers.ThreadedServer(service, hostname="127.0.0.1", port=0)
    _in_background(server.start, "peer-rpyc")
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not server.active:  # bound in the constructor, but listening only once start() runs
        if time.monotonic() > deadline:
            _say("error", error="rpyc: the server did not start listening")
            return
        time.sleep(0.001)
    _say("ready", host="127.0.0.1", port=server.port)
    _commands()
    server.close()


def serve_peer_grpc() -> None:
    """gRPC (grpcio): ``grpc.server`` with a thread pool and a generic handler for one unary method,
    no generated code; no (de)serializers, so the bytes go through as they are."""
    grpc = importlib.import_module("grpc")
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=GRPC_WORKERS), options=GRPC_OPTIONS)
    echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request,
                                               request_deserializer=None, response_serializer=None)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(GRPC_SERVICE, {"Echo": echo})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    _say("ready", target=f"127.0.0.1:{port}")
    _commands()
    server.stop(None)


def serve_peer_zerorpc(heartbeat: float | None = None) -> None:
    """zerorpc: a ``zerorpc.Server`` on an object with ``echo``, on its own thread (and gevent hub);
    its heartbeat off by default, as the client's (``_peers`` says why)."""
    zerorpc = importlib.import_module("zerorpc")

    class Echo:
        def echo(self, payload: Any) -> Any:
            return payload

    with socket.socket() as probe:  # zerorpc does not say which port it bound: pick a free one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bound = threading.Event()
    failed: list[str] = []

    def serve() -> None:  # gevent: the server is made and run on the same thread
        try:
            server = zerorpc.Server(Echo(), heartbeat=heartbeat)
            server.bind(f"tcp://127.0.0.1:{port}")
        except Exception as e:
            failed.append(f"{type(e).__name__}: {e}")
            return
        finally:
            bound.set()
        server.run()

    _in_background(serve, "peer-zerorpc")
    bound.wait()
    if failed:
        _say("error", error=f"zerorpc: {failed[0]}")
        return
    _say("ready", endpoint=f"tcp://127.0.0.1:{port}")
    _commands()


SERVERS: dict[str, Callable[..., None]] = {
    "peer-mp": serve_peer_mp,
    "peer-pyro5": serve_peer_pyro5,
    "peer-rpyc": serve_peer_rpyc,
    "peer-grpc": serve_peer_grpc,
    "peer-zerorpc": serve_peer_zerorpc,
}
