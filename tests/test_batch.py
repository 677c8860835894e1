"""BATCH: what is ready together for one peer leaves as one message (one frame, one MAC), and each
message in it is handled as if it came alone; a batch that is replayed or does not add up is
dropped whole."""

from __future__ import annotations

import pickle
import threading

import pytest

from conftest import wait_until
from test_security import KEY, FakeMain, RawWindow, ctx, no_errors_logged, recv  # noqa: F401 (fixtures)
from zprokit import Main, Window, protocol
from zprokit.protocol import Kind, pack

WAIT = 10.0


def batch_of_requests(raw: RawWindow, args: list[object], channel: str = "echo") -> tuple[list[bytes], list[int]]:
    """One BATCH of REQUESTs from ``raw``: its frames, and the requests' ids."""
    ids = [raw.session.next_id() for _ in args]
    records = b"".join(protocol.batch_item(Kind.REQUEST, i, pickle.dumps(a), raw.name, "", channel)
                       for i, a in zip(ids, args))
    session = raw.session
    assert session.main_session is not None
    frames = pack(raw.signer, Kind.BATCH, 0, session.next_seq(), session.session, session.main_session,
                  raw.name, "", "", [records], count=len(ids))
    return frames, ids


def test_replies_made_together_leave_as_one_batch_and_a_batch_of_requests_is_served(ctx):
    with Main("tcp://127.0.0.1:0", key=KEY) as main:
        main.on_msg_from_render(lambda event, args: args * 2, channel="echo", inline=True)
        raw = RawWindow(ctx, main.endpoint, "raw")
        frames, ids = batch_of_requests(raw, list(range(20)))
        raw.send(frames)
        batch = raw.expect(Kind.BATCH)
        assert batch is not None and batch.count == 20
        replies = protocol.unbatch(batch)
        assert [(m.kind, m.msg_id, pickle.loads(m.payload[0])) for m in replies] == \
               [(Kind.REPLY, i, 2 * a) for i, a in zip(ids, range(20))]
        assert main.stats()["requests_served"] == 20
        assert main.stats()["messages_in"] >= 20  # each request counted, not the one batch


def test_a_replayed_batch_is_dropped_whole(ctx):
    with Main("tcp://127.0.0.1:0", key=KEY) as main:
        ran = []
        main.on_msg_from_render(lambda event, args: ran.append(args), channel="echo", inline=True)
        raw = RawWindow(ctx, main.endpoint, "raw")
        frames, _ = batch_of_requests(raw, [1, 2, 3])
        raw.send(frames)
        assert raw.expect(Kind.BATCH) is not None
        raw.send(frames)  # the same BATCH again: its number was seen
        assert wait_until(lambda: main.stats()["rejected"]["replay"] == 1, WAIT)
        assert ran == [1, 2, 3]


def test_a_batch_that_does_not_add_up_is_dropped_whole_by_the_main(ctx):
    with Main("tcp://127.0.0.1:0", key=KEY) as main:
        ran = []
        main.on_msg_from_render(lambda event, args: ran.append(args), channel="echo", inline=True)
        raw = RawWindow(ctx, main.endpoint, "raw")
        good = protocol.batch_item(Kind.REQUEST, 1, pickle.dumps("good"), "raw", "", "echo")
        bad = protocol.batch_item(Kind.REGISTER, 2, b"{}", "raw")  # a kind no batch may carry
        session = raw.session
        raw.send(pack(raw.signer, Kind.BATCH, 0, session.next_seq(), session.session, session.main_session,
                      "raw", "", "", [good + bad], count=2))
        assert wait_until(lambda: main.stats()["rejected"]["malformed"] == 1, WAIT)
        raw.send(raw.request("still listening"))  # the main reads on
        assert raw.expect(Kind.REPLY) is not None
        assert ran == ["still listening"]


def test_a_window_settles_every_reply_of_a_batch(ctx):
    fake = FakeMain(ctx)
    accepting = threading.Thread(target=fake.accept, name="fake-main")
    accepting.start()
    with Window("w", fake.endpoint, key=KEY, heartbeat=10.0) as window:
        accepting.join(WAIT)
        futures = [window.render_msg_to_main(i, timeout=WAIT) for i in range(5)]
        asked = []
        while len(asked) < 5:
            _, *frames = fake.router.recv_multipart()
            msg = protocol.unpack(fake.signer, frames)
            if msg.kind == Kind.REQUEST:
                asked.append(msg)
            elif msg.kind == Kind.BATCH:  # calls made while others were in flight left together
                asked.extend(protocol.unbatch(msg))
        records = b"".join(protocol.batch_item(Kind.REPLY, m.msg_id, pickle.dumps(-pickle.loads(m.payload[0])))
                           for m in asked)
        fake.send(pack(fake.signer, Kind.BATCH, 0, fake.session.next_seq(), fake.session.session,
                       fake.window.session, "", "w", "", [records], count=5))
        assert [f.result(WAIT) for f in futures] == [0, -1, -2, -3, -4]
        assert window.stats()["late_replies"] == 0


def test_calls_made_while_others_are_in_flight_leave_together(ctx):
    """The first call leaves at once; the next ones, made while it is in flight, wait in the
    outbox and leave as one BATCH when a caller waits (held here: the window's loop, which would
    send them half a millisecond later, is kept busy)."""
    fake = FakeMain(ctx)
    accepting = threading.Thread(target=fake.accept, name="fake-main")
    accepting.start()
    with Window("w", fake.endpoint, key=KEY, heartbeat=10.0) as window:
        accepting.join(WAIT)
        held, release = threading.Event(), threading.Event()
        window._loop.call_soon(lambda: (held.set(), release.wait(WAIT)))
        assert held.wait(WAIT)
        try:
            futures = [window.render_msg_to_main(i, timeout=WAIT) for i in range(5)]
            first = protocol.unpack(fake.signer, recv(fake.router)[1:])
            assert first.kind == Kind.REQUEST and pickle.loads(first.payload[0]) == 0
            assert recv(fake.router, 0.2) is None  # the other four wait
            reader = threading.Thread(target=lambda: futures[1].result(WAIT), name="reader")
            reader.start()  # a caller waits for an answer: what was corked leaves first
            batch = protocol.unpack(fake.signer, recv(fake.router)[1:])
            assert batch.kind == Kind.BATCH and batch.count == 4
            asked = [first, *protocol.unbatch(batch)]
            assert [(m.kind, pickle.loads(m.payload[0])) for m in asked] == [(Kind.REQUEST, i) for i in range(5)]
            for m in asked:
                fake.send(pack(fake.signer, Kind.REPLY, m.msg_id, fake.session.next_seq(), fake.session.session,
                               fake.window.session, "", "w", "", [pickle.dumps(-pickle.loads(m.payload[0]))]))
            reader.join(WAIT)
        finally:
            release.set()
        assert [f.result(WAIT) for f in futures] == [0, -1, -2, -3, -4]


def test_the_outbox_takes_small_calls_up_to_what_the_receiver_reads():
    from zprokit._outbox import CORK_MAX, CORK_PART_MAX, Corked, Outbox, records

    def call(i: int, size: int = 10) -> Corked:
        return Corked(Kind.REQUEST, i, "", "echo", b"x" * size, 1000, 0, 0)

    box = Outbox("w")
    assert not box.add(call(0, CORK_PART_MAX + 1), None)  # a large one leaves alone
    assert not box.add(call(0), 600)  # more than a receiver that reads 600 bytes would take in a batch
    for i in range(CORK_MAX):
        assert not box.full
        assert box.add(call(i), None)
    assert box.full
    taken = box.take()
    assert [c.msg_id for c in taken] == list(range(CORK_MAX)) and box.items == []
    signer = protocol.Signer(KEY)
    frames = pack(signer, Kind.BATCH, 0, 1, bytes(16), bytes(16), "w", "", "", [records(taken, "w")],
                  count=len(taken))
    inner = protocol.unbatch(protocol.unpack(signer, frames))
    assert [(m.kind, m.msg_id, m.source, m.channel, m.timeout_ms, bytes(m.payload[0])) for m in inner] == \
           [(Kind.REQUEST, i, "w", "echo", 1000, b"x" * 10) for i in range(CORK_MAX)]


def test_a_batch_with_a_kind_the_main_never_takes_is_refused_not_an_error(ctx):
    """An ACK may travel in a batch (main -> window), but a main takes none: counted, not logged as a crash."""
    with Main("tcp://127.0.0.1:0", key=KEY) as main:
        raw = RawWindow(ctx, main.endpoint, "raw")
        session = raw.session
        raw.send(pack(raw.signer, Kind.BATCH, 0, session.next_seq(), session.session, session.main_session,
                      "raw", "", "", [protocol.batch_item(Kind.ACK, 5, b"")], count=1))
        assert wait_until(lambda: main.stats()["rejected"]["malformed"] == 1, WAIT)


def test_corked_calls_never_make_a_batch_larger_than_the_main_reads():
    """Every record carries the window's name: with a long name and a main that reads 4 KiB,
    the outbox leaves before its BATCH would be refused as oversized."""
    with Main("tcp://127.0.0.1:0", max_payload=4096) as main:
        main.on_msg_from_render(lambda event, args: len(args), channel="echo")
        with Window("w" * 200, main.endpoint, key=main.key) as window:
            futures = [window.render_msg_to_main(b"x" * 100, channel="echo", timeout=WAIT) for _ in range(40)]
            assert [f.result(WAIT) for f in futures] == [100] * 40
            assert main.stats()["rejected"]["oversized"] == 0


def test_one_way_messages_routed_together_leave_together_and_so_do_their_acks(ctx):
    with Main("tcp://127.0.0.1:0", key=KEY) as main:
        sender, receiver = RawWindow(ctx, main.endpoint, "a"), RawWindow(ctx, main.endpoint, "b")
        ids = [sender.session.next_id() for _ in range(10)]
        records = b"".join(protocol.batch_item(Kind.MESSAGE, i, pickle.dumps(n), "a", "b", "c")
                           for n, i in enumerate(ids))
        session = sender.session
        sender.send(pack(sender.signer, Kind.BATCH, 0, session.next_seq(), session.session, session.main_session,
                         "a", "", "", [records], count=10))
        forwarded = receiver.expect(Kind.BATCH)
        assert forwarded is not None
        assert [(m.kind, m.source, m.channel, pickle.loads(m.payload[0])) for m in protocol.unbatch(forwarded)] == \
               [(Kind.MESSAGE, "a", "c", n) for n in range(10)]
        acks = sender.expect(Kind.BATCH)
        assert acks is not None
        assert [(m.kind, m.msg_id) for m in protocol.unbatch(acks)] == [(Kind.ACK, i) for i in ids]
        assert main.stats()["messages_routed"] == 10


@pytest.mark.parametrize("sizes, room, runs", [
    ([10, 10, 10], 25, [(0, 2), (2, 3)]),  # cut where the next would not fit
    ([10, None, 10, 10], 100, [(0, 1), (1, 2), (2, 4)]),  # one that cannot travel in a batch leaves alone, in order
    ([10, 200, 10], 100, [(0, 1), (1, 2), (2, 3)]),  # so does one larger than the room
    ([], 100, []),
    ([30] * 4, 60, [(0, 2), (2, 4)]),
])
def test_batch_runs_cut_in_order_within_the_room(sizes, room, runs):
    assert list(protocol.batch_runs(sizes, room)) == runs


def test_a_batch_has_room_within_what_its_receiver_reads():
    assert protocol.batch_room(None) == protocol.BATCH_MAX
    assert protocol.batch_room(10 * protocol.BATCH_MAX) == protocol.BATCH_MAX
    assert protocol.batch_room(4096) < 4096 - 600  # a BATCH's own bytes: version, header, two names, MAC


def test_acks_of_a_run_of_routed_messages_fit_what_the_sender_reads():
    """Many routed one-way messages from a window that reads little: their ACKs come back in
    BATCHes it can read, so every one of its futures is settled."""
    with Main("tcp://127.0.0.1:0") as main:
        with Window("a", main.endpoint, key=main.key, max_payload=2048) as sender, \
                Window("b", main.endpoint, key=main.key) as receiver:
            got = []
            receiver.on_render_msg_to_render(lambda event, args: got.append(args), channel="c")
            futures = [sender.render_msg_to_render("b", i, channel="c", timeout=WAIT) for i in range(400)]
            assert [f.result(WAIT) for f in futures] == [None] * 400
            assert wait_until(lambda: got == list(range(400)), WAIT)
            assert sender.stats()["rejected"]["oversized"] == 0
