"""The measuring side's tools: raw clients, timing loops, zprokit's wire format alone, and ``_Child``.

``_Child`` is this process's handle on a child program (``_children``): it
starts ``python -m zprokit.bench --serve KIND PARAMS`` and talks JSON lines
with it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import pickle
import queue
import secrets
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator, Mapping, cast

import zmq

from .. import protocol
from ._common import CHILD_TIMEOUT, INFLIGHT, SMALL, BenchError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _raw_client(endpoint: str) -> Iterator[zmq.Socket[Any]]:
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.rcvtimeo = int(CHILD_TIMEOUT * 1000)
    dealer.sndtimeo = int(CHILD_TIMEOUT * 1000)
    dealer.connect(endpoint)
    try:
        yield dealer
    finally:
        dealer.close(0)
        ctx.term()


def _round_trips(call: Callable[[bytes], Any], n: int, size: int = SMALL) -> tuple[float, float]:
    """p50 and p99 in µs of ``n`` sequential calls of ``size`` bytes, after ``n // 10`` untimed ones."""
    payload = bytes(size)
    for _ in range(max(n // 10, 20)):
        call(payload)
    times = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t = clock()
        call(payload)
        times.append(clock() - t)
    times.sort()
    return times[len(times) // 2] / 1000, times[max(0, math.ceil(0.99 * len(times)) - 1)] / 1000


def _raw_pipelined(dealer: zmq.Socket[Any], total: int, wire: "_Wire | None" = None, size: int = SMALL) -> float:
    """Requests per second with ``INFLIGHT`` outstanding, of ``size`` bytes; through ``wire`` (signed,
    pickled) if given."""
    payload = bytes(size)
    for _ in range(2):  # the first run warms up
        start = time.perf_counter()
        sent = received = 0
        while sent < min(INFLIGHT, total):
            dealer.send(wire.request(payload) if wire else payload)
            sent += 1
        while received < total:
            reply = dealer.recv()
            if wire:
                wire.answer(reply)
            received += 1
            if sent < total:
                dealer.send(wire.request(payload) if wire else payload)
                sent += 1
        elapsed = time.perf_counter() - start
    return total / elapsed


class _Wire:
    """zprokit's wire format alone, for the floor rows: sign, pickle, check; nothing else."""

    def __init__(self, key: bytes) -> None:
        self.signer = protocol.Signer(key)
        self.session, self.peer = secrets.token_bytes(16), protocol.NO_SESSION
        self.seq = 0

    def request(self, obj: Any) -> bytes:
        self.seq += 1
        frames = protocol.pack(self.signer, protocol.Kind.REQUEST, self.seq, self.seq, self.session, self.peer,
                               "floor", "", "echo", [pickle.dumps(obj, protocol=5)])
        return cast(bytes, frames[0])

    def answer(self, frame: bytes) -> Any:
        msg = protocol.unpack(self.signer, [frame])
        if msg.kind != protocol.Kind.REPLY or len(msg.payload) != 1:
            raise BenchError(f"wire format floor: unexpected {msg.kind!r}")
        return pickle.loads(msg.payload[0])

    def call(self, dealer: zmq.Socket[Any], obj: Any) -> Any:
        dealer.send(self.request(obj))
        return self.answer(dealer.recv())


def _pipelined(request: Callable[[bytes], Any], total: int, payload: bytes) -> float:
    for _ in range(2):  # the first run warms up
        start = time.perf_counter()
        outstanding = _Outstanding(INFLIGHT)
        for _ in range(total):
            outstanding.add(request(payload))
        outstanding.drain()
        elapsed = time.perf_counter() - start
    return total / elapsed


def _streamed(consume: Callable[[int], int], total: int) -> float:
    """Items per second of a stream of ``total`` items, from asking to the end: ``consume(total)`` asks
    for one and takes every item, returning how many came. The first stream warms up."""
    for _ in range(2):
        start = time.perf_counter()
        got = consume(total)
        elapsed = time.perf_counter() - start
        if got != total:
            raise BenchError(f"a stream of {total} items brought {got}")
    return total / elapsed


def _raw_stream(dealer: zmq.Socket[Any], total: int) -> int:
    """Ask ``serve_raw_stream`` for ``total`` items, ``INFLIGHT`` ahead, and take them all, returning
    credit as zprokit's ``ReplyStream`` does: every ``INFLIGHT // 2`` items taken. How many came."""
    batch = max(1, INFLIGHT // 2)
    dealer.send(struct.pack("!II", total, INFLIGHT))
    got = taken = 0
    try:
        while dealer.recv():  # an empty frame: the end
            got += 1
            taken += 1
            if taken >= batch:
                dealer.send(struct.pack("!I", taken))
                taken = 0
    except zmq.Again:
        raise BenchError(f"raw stream: no item within {CHILD_TIMEOUT} s after {got} of {total}") from None
    return got


class _Outstanding:
    """At most ``limit`` futures pending: adding one more waits on the oldest. Failures raise ``BenchError``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._futures: collections.deque[Any] = collections.deque()

    def add(self, future: Any) -> None:
        self._futures.append(future)
        if len(self._futures) >= self.limit:
            self._settle(self._futures.popleft())

    def drain(self) -> None:
        while self._futures:
            self._settle(self._futures.popleft())

    @staticmethod
    def _settle(future: Any) -> None:
        try:
            future.result(CHILD_TIMEOUT)
        except Exception as e:
            raise BenchError(f"a request failed: {type(e).__name__}: {e}") from None


def _timed_flow(send: Callable[[int], None], warm: int, total: int, receivers: list["_Child"],
                flush: Callable[[], None] = lambda: None) -> float:
    """Send ``total`` numbered messages; seconds from the first after ``warm`` until every receiver has all."""
    for seq in range(warm):
        send(seq)
    flush()
    for r in receivers:
        r.expect("warm")
    start = time.monotonic()
    for seq in range(warm, total):
        send(seq)
    flush()
    ends: list[float] = []
    for r in receivers:
        try:
            done = r.expect("done")
        except BenchError as e:
            got = r.ask("count", timeout=5.0)
            raise BenchError(f"{r.kind} got {got['count']} of {total} messages "
                             f"({got['out_of_order']} out of order): {e}") from None
        if done["out_of_order"]:
            raise BenchError(f"{r.kind}: {done['out_of_order']} messages out of order")
        ends.append(done["t"])
    return max(ends) - start


def _numbered(seq: int) -> bytes:
    return seq.to_bytes(8, "big") + bytes(SMALL - 8)


def _raw_echo_bytes(dealer: zmq.Socket[Any]) -> Callable[[Any], Any]:
    def echo(payload: bytes) -> Any:
        dealer.send(payload, copy=False)
        return dealer.recv(copy=False).buffer

    return echo


def _raw_echo_array(dealer: zmq.Socket[Any], np: Any) -> Callable[[Any], Any]:
    def echo(array: Any) -> Any:
        meta = json.dumps([array.dtype.str, array.shape]).encode()
        dealer.send_multipart([meta, array], copy=False)
        meta_frame, data = dealer.recv_multipart(copy=False)
        dtype, shape = json.loads(meta_frame.bytes)
        return np.frombuffer(data.buffer, dtype=dtype).reshape(shape)

    return echo


def _bandwidth(echo: Callable[[Any], Any], payload: Any, count: int) -> float:
    """GB/s of ``count`` round trips of ``payload`` (both directions counted), after one untimed."""
    size = payload.nbytes if hasattr(payload, "nbytes") else len(payload)
    reply = echo(payload)
    got = reply.nbytes if hasattr(reply, "nbytes") else len(reply)
    if got != size:
        raise BenchError(f"a {size}-byte payload came back as {got} bytes")
    start = time.perf_counter()
    for _ in range(count):
        echo(payload)
    return 2 * size * count / (time.perf_counter() - start) / 1e9


def _split(n: int, parts: int) -> list[int]:
    """``n`` as ``parts`` near-equal counts."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _rss_kib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return float(line.split()[1])
    raise BenchError(f"no VmRSS for process {pid}")


def _brief(stats: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if v and k != "rejected"}


class _Child:
    """A ``--serve KIND`` process: JSON lines out, JSON lines in, gone when its stdin closes."""

    def __init__(self, kind: str, params: dict[str, Any], env: dict[str, str]) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zprokit.bench", "--serve", kind, json.dumps(params)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1,
        )
        self.pid = self.proc.pid
        self._lines: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, name=f"bench-{kind}-{self.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self._lines.put(json.loads(line))
            except ValueError:
                self._lines.put({"event": "error", "error": f"not JSON: {line.strip()[:200]}"})
        self._lines.put(None)

    def expect(self, event: str, timeout: float = CHILD_TIMEOUT) -> dict[str, Any]:
        """The child's next line, which must be ``event``; ``BenchError`` otherwise, or after ``timeout`` s."""
        try:
            msg = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"{self.kind}: no {event!r} within {timeout} s") from None
        if msg is None:
            self._lines.put(None)
            raise BenchError(f"{self.kind} (pid {self.pid}) exited with status {self.proc.wait()} before {event!r}")
        if msg.get("event") != event:
            raise BenchError(f"{self.kind}: expected {event!r}, got {msg}")
        return msg

    def ask(self, op: str, timeout: float = CHILD_TIMEOUT, **params: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"op": op, **params}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise BenchError(f"{self.kind} (pid {self.pid}) is gone") from None
        return self.expect(op, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Close its stdin (its cue to exit), then kill it if it has not gone within ``timeout`` s. Idempotent."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("bench: %s (pid %s) did not exit; killing it", self.kind, self.pid)
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
