"""The child programs of ``zprokit bench``, one ``serve_*`` function per ``--serve KIND``.

Each is run as ``python -m zprokit.bench --serve KIND PARAMS`` (``serve``:
``SERVERS`` maps KIND to its function; PARAMS are its keyword arguments, as
JSON). It prints one JSON object per line on stdout, the first naming the
build it runs (``zprokit.build_mode``: the parent checks that it measures
one build throughout), takes commands the same way on stdin, and exits
when stdin closes, so none outlives the benchmark. The key reaches them
through ``ZPROKIT_KEY``, never the command line.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import pickle
import secrets
import struct
import sys
import threading
import time
from typing import Any, Callable, Iterator, Mapping

import zmq

from .. import _env, protocol
from .._compiled import build_mode
from ..main import Main
from ..window import Window
from ._common import CHILD_TIMEOUT, INFLIGHT, LOCAL, SMALL

_say_lock = threading.Lock()


def _say(event: str, **fields: Any) -> None:
    with _say_lock:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()


def _commands(ops: dict[str, Callable[..., dict[str, Any]]] | None = None) -> None:
    """Answer commands from stdin until it closes (the parent is done, or gone)."""
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            _say(op, **(ops or {})[op](**cmd))
        except Exception as e:
            _say("error", error=f"{op}: {type(e).__name__}: {e}")


class _Counter:
    """Counts numbered payloads; says ``warm`` and ``done`` with the time they arrived."""

    def __init__(self, warm: int, total: int) -> None:
        self.warm, self.total = warm, total
        self.count = 0
        self.out_of_order = 0
        self._last = -1

    def arrive(self, payload: Any) -> None:
        seq = int.from_bytes(payload[:8], "big")
        if seq != self._last + 1:
            self.out_of_order += 1
        self._last = seq
        self.count += 1
        if self.count == self.warm:
            _say("warm", t=time.monotonic())
        elif self.count == self.total:
            _say("done", t=time.monotonic(), out_of_order=self.out_of_order)

    def report(self) -> dict[str, Any]:
        return {"count": self.count, "out_of_order": self.out_of_order}


def _socket_loop(step: Callable[[], None]) -> Callable[[], None]:
    """Run ``step`` (which raises ``zmq.Again`` on its receive timeout) on a thread; returns its stop."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                step()
            except zmq.Again:
                continue

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join(5.0)

    return stopper


def _raw_socket(ctx: zmq.Context[Any], kind: int, bind: bool = False, endpoint: str = "tcp://127.0.0.1:*") -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = ctx.socket(kind)
    sock.linger = 0
    sock.rcvtimeo = 100  # so its loop sees the stop flag
    sock.sndtimeo = 5000  # a blocked send (a full peer) ends too
    (sock.bind if bind else sock.connect)(endpoint)
    return sock


def _serve_echo(answer: Callable[[list[zmq.Frame]], list[Any]]) -> None:
    """A ROUTER that sends ``answer(frames)`` back for every message: wait, then answer all that is waiting."""
    ctx = zmq.Context()
    router = _raw_socket(ctx, zmq.ROUTER, bind=True)

    def step() -> None:
        if not router.poll(100):
            raise zmq.Again()
        while True:
            try:
                frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            router.send_multipart(answer(frames), copy=False)

    stop = _socket_loop(step)
    _say("ready", endpoint=router.getsockopt_string(zmq.LAST_ENDPOINT))
    _commands()
    stop()
    router.close(0)
    ctx.term()


def serve_raw_echo() -> None:
    """A ROUTER that sends every message back as it came."""
    _serve_echo(lambda frames: frames)


def serve_floor_echo() -> None:
    """The raw echo through zprokit's wire format: check each request, answer it signed (the floor rows)."""
    signer = protocol.Signer(os.environ[_env.KEY].encode())
    session, seqs = secrets.token_bytes(16), itertools.count(1)

    def answer(frames: list[zmq.Frame]) -> list[Any]:
        ident, head = frames
        msg = protocol.unpack(signer, [head.buffer])
        reply = pickle.dumps(pickle.loads(msg.payload[0]), protocol=5)
        return [ident, *protocol.pack(signer, protocol.Kind.REPLY, msg.msg_id, next(seqs), session, msg.session,
                                      "", "floor", "", [reply])]

    _serve_echo(answer)


def serve_raw_forward() -> None:
    """A ROUTER that forwards ``[target, payload]`` from one DEALER to the DEALER named ``target``."""
    ctx = zmq.Context()
    router = _raw_socket(ctx, zmq.ROUTER, bind=True)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unknown target is an error, a full one blocks

    def step() -> None:
        source, *frames = router.recv_multipart(copy=False)
        if len(frames) == 1:  # a hello
            router.send_multipart([source, b"welcome"])
        else:
            router.send_multipart([frames[0], source, *frames[1:]], copy=False)

    stop = _socket_loop(step)
    _say("ready", endpoint=router.getsockopt_string(zmq.LAST_ENDPOINT))
    _commands()
    stop()
    router.close(0)
    ctx.term()


def serve_raw_sink(endpoint: str, warm: int, total: int) -> None:
    """A DEALER named ``sink`` that counts what the forwarder sends it."""
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.setsockopt(zmq.ROUTING_ID, b"sink")
    dealer.connect(endpoint)
    dealer.send(b"hello")
    dealer.recv()
    dealer.rcvtimeo = 100
    _count_until_closed(ctx, dealer, warm, total)


def serve_raw_sub(endpoint: str, warm: int, total: int) -> None:
    """A SUB that counts what the PUB sends."""
    ctx = zmq.Context()
    sub = _raw_socket(ctx, zmq.SUB, endpoint=endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"B")
    _count_until_closed(ctx, sub, warm, total)


def _count_until_closed(ctx: zmq.Context[Any], sock: zmq.Socket[Any], warm: int, total: int) -> None:
    """Count the numbered payloads ``sock`` receives (two frames each: a header, the payload),
    answering ``count`` until stdin closes; then close ``sock`` and ``ctx``."""
    counter = _Counter(warm, total)

    def step() -> None:
        _, payload = sock.recv_multipart(copy=False)
        counter.arrive(payload.buffer)

    stop = _socket_loop(step)
    _say("ready")
    _commands({"count": counter.report})
    stop()
    sock.close(0)
    ctx.term()


def serve_raw_stream() -> None:
    """A ROUTER that streams with credit, as a ``Main`` serves a stream: asked for ``n`` items with
    ``credit`` (``!II``), it sends 100-byte items while it has credit, waiting for more when it has
    none (``!I``: how many the consumer took), then an empty frame, the end. One thread, which reads
    credit only when it has none left: until then there is nothing to wait for."""
    ctx = zmq.Context()
    router = _raw_socket(ctx, zmq.ROUTER, bind=True)
    closing = threading.Event()
    item = bytes(SMALL)

    def step() -> None:
        peer, request = router.recv_multipart()
        if len(request) != 8:  # credit returned after a stream had all its items: nothing owes it
            return
        n, credit = struct.unpack("!II", request)
        for _ in range(n):
            while credit <= 0:  # as a zprokit producer, it waits for credit as long as its consumer is there
                try:
                    _, more = router.recv_multipart()
                except zmq.Again:  # the receive timeout: is the benchmark over?
                    if closing.is_set():
                        return
                    continue
                if len(more) == 4:
                    credit += struct.unpack("!I", more)[0]
            router.send_multipart([peer, item])
            credit -= 1
        router.send_multipart([peer, b""])

    stop = _socket_loop(step)
    _say("ready", endpoint=router.getsockopt_string(zmq.LAST_ENDPOINT))
    _commands()
    closing.set()
    stop()
    router.close(0)
    ctx.term()


def serve_raw_router() -> None:
    """A ROUTER that many DEALERs say hello to; it then asks them round-robin, 64 in flight."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.rcvtimeo = int(CHILD_TIMEOUT * 1000)
    router.bind("tcp://127.0.0.1:*")
    peers: list[bytes] = []

    def wait(n: int) -> dict[str, Any]:
        while len(peers) < n:
            peer, _ = router.recv_multipart()
            peers.append(peer)
        return {"peers": len(peers)}

    def route(k: int) -> dict[str, Any]:
        payload = bytes(SMALL)
        reached: set[bytes] = set()
        start = time.perf_counter()
        sent = 0
        while sent < min(INFLIGHT, k):
            router.send_multipart([peers[sent % len(peers)], payload])
            sent += 1
        for _ in range(k):
            peer, _ = router.recv_multipart(copy=False)
            reached.add(peer.bytes)
            if sent < k:
                router.send_multipart([peers[sent % len(peers)], payload])
                sent += 1
        return {"seconds": time.perf_counter() - start, "reached": len(reached)}

    _say("ready", endpoint=router.getsockopt_string(zmq.LAST_ENDPOINT))
    _commands({"wait": wait, "route": route})
    router.close(0)
    ctx.term()


def serve_raw_dealers(endpoint: str, first: int, count: int) -> None:
    """``count`` DEALERs in one context: each says hello, then echoes what the ROUTER asks."""
    ctx = zmq.Context()
    dealers = []
    poller = zmq.Poller()
    for i in range(first, first + count):
        dealer = ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.setsockopt(zmq.ROUTING_ID, f"w{i}".encode())
        dealer.connect(endpoint)
        dealer.send(b"hello")
        poller.register(dealer, zmq.POLLIN)
        dealers.append(dealer)

    def step() -> None:
        events = poller.poll(100)
        if not events:
            raise zmq.Again()
        for dealer, _ in events:
            while True:
                try:
                    dealer.send(dealer.recv(zmq.NOBLOCK, copy=False), copy=False)
                except zmq.Again:
                    break

    stop = _socket_loop(step)
    _say("ready")
    _commands()
    stop()
    for dealer in dealers:
        dealer.close(0)
    ctx.term()


def serve_zp_main() -> None:
    """A ``Main`` with echo handlers, inline and pooled, and a stream of ``n`` 100-byte items (a
    generator: it runs on the pool, as the window's credit allows); it also drives the many-windows run."""
    seen: set[str] = set()
    seen_changed = threading.Condition()

    def saw(event: Any, name: str) -> None:
        with seen_changed:
            seen.add(name)
            seen_changed.notify_all()

    with Main(LOCAL, request_timeout=CHILD_TIMEOUT) as main:
        main.on_msg_from_render(lambda event, args: args, channel="echo", inline=True)
        main.on_msg_from_render(lambda event, args: args, channel="echo_pooled")
        main.on_msg_from_render(saw, channel="bench.seen", inline=True)

        def items(event: Any, n: int) -> Iterator[bytes]:
            item = bytes(SMALL)
            for _ in range(n):
                yield item

        main.on_msg_from_render(items, channel="bench.stream")

        def windows() -> dict[str, Any]:
            return {"count": len(main.get_all_windows())}

        def route(k: int) -> dict[str, Any]:
            names = [w.name for w in main.get_all_windows()]
            reached: set[str] = set()
            window: collections.deque[tuple[str, Any]] = collections.deque()

            def settle() -> None:
                name, future = window.popleft()
                if future.result(CHILD_TIMEOUT) == name:
                    reached.add(name)

            start = time.perf_counter()
            for i in range(k):
                name = names[i % len(names)]
                window.append((name, main.main_call_render(name, i, channel="bench.name")))
                if len(window) >= INFLIGHT:
                    settle()
            while window:
                settle()
            return {"seconds": time.perf_counter() - start, "reached": len(reached)}

        def broadcast() -> dict[str, Any]:
            n = len(main.get_all_windows())
            with seen_changed:
                seen.clear()
            main.broadcast("who is there", topic="bench")
            with seen_changed:
                seen_changed.wait_for(lambda: len(seen) >= n, CHILD_TIMEOUT)
                return {"reached": len(seen)}

        def stats() -> dict[str, Any]:
            return {"stats": main.stats()}

        _say("ready", endpoint=main.endpoint)
        _commands({"windows": windows, "route": route, "broadcast": broadcast, "stats": stats})


def serve_zp_receiver(endpoint: str, name: str, mode: str, warm: int, total: int) -> None:
    """A ``Window`` counting one-way messages from other windows (``mode="render"``) or broadcasts."""
    counter = _Counter(warm, total)
    with Window(name, endpoint, exit_with_main=True) as window:
        if mode == "render":
            window.on_render_msg_to_render(lambda event, payload: counter.arrive(payload))
        else:
            window.on_broadcast(lambda event, payload: counter.arrive(payload))
        _say("ready")
        _commands({"count": counter.report})


def serve_zp_windows(endpoint: str, first: int, count: int) -> None:
    """``count`` ``Window`` objects sharing one ``zmq.Context``; each answers to its name and to broadcasts."""
    ctx = zmq.Context()
    windows: list[Window] = []
    try:
        for i in range(first, first + count):
            window = Window(f"w{i}", endpoint, context=ctx, workers=1, exit_with_main=True)
            windows.append(window)
            window.on_msg_from_main(lambda event, args, name=window.name: name, channel="bench.name")
            window.on_broadcast(
                lambda event, args, w=window: w.render_msg_to_main(w.name, channel="bench.seen"), topic="bench")
        _say("ready")
        _commands()
    finally:
        for window in windows:
            window.close()
        ctx.term()


SERVERS: dict[str, Callable[..., None]] = {
    "raw-echo": serve_raw_echo,
    "floor-echo": serve_floor_echo,
    "raw-forward": serve_raw_forward,
    "raw-sink": serve_raw_sink,
    "raw-sub": serve_raw_sub,
    "raw-stream": serve_raw_stream,
    "raw-router": serve_raw_router,
    "raw-dealers": serve_raw_dealers,
    "zp-main": serve_zp_main,
    "zp-receiver": serve_zp_receiver,
    "zp-windows": serve_zp_windows,
}


def serve(kind: str, params: dict[str, Any], others: Mapping[str, Callable[..., None]] = {}) -> None:
    """Run the child program ``kind`` (of ``SERVERS``, or of ``others``: the peers' echo servers),
    after a first line with the build this process runs."""
    _say("build", mode=build_mode())
    (SERVERS[kind] if kind in SERVERS else others[kind])(**params)
