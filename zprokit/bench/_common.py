"""What both sides of ``zprokit bench`` share: the endpoint, the sizes every row uses, the timeout, the error;
and the names of the peers ``--peers`` can compare (``_peers`` has them all: raw pyzmq and zprokit always run)."""

from __future__ import annotations

LOCAL = "tcp://127.0.0.1:0"
INFLIGHT = 64
SMALL = 100  # bytes of payload in the small-message rows
CHILD_TIMEOUT = 60.0  # seconds any one step of a child may take
PEER_NAMES = ("multiprocessing", "pyro5", "rpyc", "grpc", "zerorpc")


class BenchError(Exception):
    """The benchmark could not measure something: a child failed, a message was lost, a timeout."""
