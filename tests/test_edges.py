"""Errors at the edge: no ZeroMQ exception escapes a public call.

A low-level failure reaches the user as one of zprokit's own errors (or an
``OSError`` for a bind), with the ZeroMQ error kept as its cause: ``Closed``
when this node was closed ("you closed it"), ``PeerLost`` when the other
side went ("the peer broke it").
"""

from __future__ import annotations

import errno
import threading

import pytest
import zmq

from zprokit import Closed, Main, PeerLost, QueueFull, Window, ZprokitError
from zprokit._loop import IOLoop, SharedSocket

pytestmark = pytest.mark.timeout(60)


def test_binding_an_endpoint_in_use_is_an_oserror_with_the_zmq_error_as_its_cause():
    with Main("tcp://127.0.0.1:0") as first:
        with pytest.raises(OSError) as raised:
            Main(first.endpoint)
    assert raised.value.errno == errno.EADDRINUSE
    assert isinstance(raised.value.__cause__, zmq.ZMQError)
    assert not isinstance(raised.value, zmq.ZMQError)


def test_a_closed_shared_socket_says_closed_not_enotsock():
    ctx = zmq.Context()
    loop = IOLoop("edge-test")
    shared = SharedSocket(ctx.socket(zmq.DEALER), loop)
    shared.close(0)
    try:
        with shared.lock, pytest.raises(Closed):
            shared.send_locked([b"x"])
    finally:
        ctx.term()


def test_sends_racing_close_raise_closed_never_a_zmq_error():
    """Senders on many threads while the main closes: each call succeeds or raises Closed
    (or QueueFull, PeerLost: zprokit's own), and never a ZMQError."""
    main = Main("tcp://127.0.0.1:0")
    window = Window("racer", main.endpoint, key=main.key)
    window.on_msg_from_main(lambda event, args: None)
    window.on_msg_from_main(lambda event, args: args, channel="call")
    main.on_msg_from_render(lambda event, args: args)
    escaped: list[BaseException] = []
    start = threading.Barrier(4)

    def hammer(send: object) -> None:
        start.wait()
        for _ in range(2000):
            try:
                send()  # type: ignore[operator]
            except (Closed, QueueFull, PeerLost):
                pass
            except BaseException as e:  # the failure this test is for
                escaped.append(e)
                return

    senders = [
        lambda: main.broadcast("b", timeout=0.01),
        lambda: main.main_msg_to_render("racer", "m", timeout=0.01),
        lambda: main.main_call_render("racer", "c", channel="call"),
    ]
    threads = [threading.Thread(target=hammer, args=(send,)) for send in senders]
    for t in threads:
        t.start()
    start.wait()
    main.close()
    for t in threads:
        t.join(30)
    window.close()
    assert escaped == [], escaped
    assert all(not isinstance(e, zmq.ZMQError) for e in escaped)


def test_a_window_told_its_main_is_gone_says_peer_lost_and_one_closed_says_closed():
    main = Main("tcp://127.0.0.1:0")
    release = threading.Event()
    main.on_msg_from_render(lambda event, args: release.wait(30))
    window = Window("patient", main.endpoint, key=main.key, exit_with_main=False, reconnect=False)
    try:
        pending = window.render_msg_to_main("x", timeout=30)
        closing = threading.Thread(target=main.close)  # it waits a moment for the busy handler
        closing.start()
        with pytest.raises(PeerLost):
            pending.result(10)
    finally:
        release.set()
        closing.join(10)
        window.close()
    with pytest.raises(Closed):
        window.render_msg_to_main("after close")
    assert issubclass(PeerLost, ZprokitError) and issubclass(Closed, ZprokitError)
