"""Worker groups: windows join groups when they connect; the main calls any one member (the least
loaded, equals in turn, sent on to another member when one leaves with the call) or all of them;
a window calls any member through the main.

Each test names the promise it checks, and ends with nothing left behind: no call pending,
queued, running or carried, and every window's count of calls in flight back to 0. Windows
that leave mid-call are closed abruptly (``close()`` from another thread while their handler
still runs) or, in their own processes, killed.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

import zprokit
from zprokit import Main, PeerLost, RemoteError, Timeout, Window, WindowInfo, WindowNotFound
from zprokit.protocol import Rejected
from zprokit.session import Welcome

from conftest import TESTS_DIR, Inbox, wait_until
from conftest import idle as no_calls_left
from test_cli import KEY, Background, zprokit as run_zprokit
from test_session import T0, MainNode, WindowNode, join

pytestmark = pytest.mark.timeout(60)
WAIT = 10.0
START = 20.0  # a window process may take this long to start on a loaded machine
ENV = {"PYTHONPATH": TESTS_DIR}


@pytest.fixture
def main(zprokit_main: Main) -> Main:
    return zprokit_main


@pytest.fixture
def member(zprokit_window):
    """A factory of windows in group "gpu" (or ``groups=``) that answer ``job`` with
    ``(their name, the caller, args)``, from the main and from other windows alike."""

    def make(name: str, groups=("gpu",), **options) -> Window:
        window = zprokit_window(name, groups=groups, **options)
        answer = (lambda event, args: (window.name, event.sender, args))
        window.on_msg_from_main(answer, channel="job")
        window.on_render_msg_to_render(answer, channel="job")
        return window

    return make


def loads(main: Main) -> dict[str, int]:
    """Each window's calls in flight as the main counts them for the pick: its own and routed."""
    return {peer.name: peer.calls + peer.routed for peer in list(main._session.windows.values())}


def idle(main: Main, *windows: Window) -> bool:
    """No call left anywhere (pending, queued, running or carried), and every load back to 0."""
    return no_calls_left(main, *windows) and not any(loads(main).values())


def holder(window: Window, seen: Inbox) -> None:
    """``hold``: report, then wait until the caller gives up (its cancel or timeout)."""

    def hold(event, args):
        seen.put((window.name, args))
        return event.cancelled.wait(WAIT)

    window.on_msg_from_main(hold, channel="hold")
    window.on_render_msg_to_render(hold, channel="hold")


def stall_first(windows: list[Window], release: threading.Event, seen: Inbox) -> None:
    """``stall``: a member that gets the call reports it and answers only once ``release`` is set."""

    def make(window: Window):
        def stall(event, args):
            seen.put(window.name)
            release.wait(WAIT)
            return window.name

        return stall

    for window in windows:
        window.on_msg_from_main(make(window), channel="stall")
        window.on_render_msg_to_render(make(window), channel="stall")


def leave_mid_call(main: Main, window: Window, release: threading.Event) -> None:
    """Close ``window`` while its handler still runs (as a crash would leave its call), then let the handler end."""
    closing = threading.Thread(target=window.close, name="test-close")
    closing.start()
    assert wait_until(lambda: not main.has_window(window.name), WAIT)
    release.set()
    closing.join(WAIT)
    assert not closing.is_alive()


# ---------------------------------------------------------------------------- joining groups


def test_a_window_joins_its_groups_when_it_connects_and_the_registry_shows_them(main, zprokit_window):
    zprokit_window("a", groups=["gpu", "batch", "gpu", "cafe\u0301"])
    zprokit_window("b")
    assert main.get_window("a").groups == ("gpu", "batch", "caf\u00e9")  # in order, once each, NFC
    assert main.get_window("b").groups == ()
    assert {info.name: info.groups for info in main.get_all_windows()} == {"a": ("gpu", "batch", "caf\u00e9"), "b": ()}
    assert WindowInfo("x", "h", 1, 0.0).groups == ()


@pytest.mark.parametrize("groups, words", [
    ("gpu", "not one str"),
    ([""], "non-empty"),
    (["a\0b"], "NUL"),
    (["x" * 256], "at most 255 bytes"),
    ([f"g{i}" for i in range(65)], "at most 64 groups"),
    ([1], "non-empty string"),
    (None, "list of group names"),
])
def test_bad_groups_raise_value_error_when_the_window_is_made(main, groups, words):
    with pytest.raises(ValueError, match=words):
        Window("bad", main.endpoint, key=main.key, groups=groups)
    assert not main.has_window("bad")


def test_a_window_may_join_64_groups_of_255_bytes(main, zprokit_window):
    groups = tuple(f"{i:03d}" + "g" * 252 for i in range(64))
    zprokit_window("many", groups=groups)
    assert main.get_window("many").groups == groups


def test_bad_group_call_arguments_raise_value_error_at_once(main, member):
    window = member("w")
    for call in (lambda: main.call_any("", 1), lambda: main.call_any("gpu", 1, retries=-1),
                 lambda: main.call_any("gpu", 1, retries=True), lambda: main.call_all(1, group="a\0b"),
                 lambda: window.render_call_any(None, 1), lambda: window.render_call_any("gpu", 1, retries=2**32)):
        with pytest.raises(ValueError):
            call()
    assert idle(main, window)


def test_the_main_checks_helloes_groups_and_an_old_window_without_them_has_none():
    main = MainNode()
    for bad in ("gpu", ["gpu", 1], [""], ["x" * 256], ["g"] * 65, {"gpu": 1}):
        with pytest.raises(Rejected) as info:
            main.session.hello(b"\xff" + os.urandom(15), WindowNode("w").hello(groups=bad), T0)
        assert info.value.reason == "malformed"
    old = WindowNode("old")
    assert isinstance(main.session.hello(old.probe, old.hello(), T0), Welcome)  # no "groups" field at all
    assert join(MainNode(), WindowNode("old")).info.groups == ()
    session = MainNode()
    peer = join(session, WindowNode("new"), groups=["gpu", "cpu"])
    assert peer.info.groups == ("gpu", "cpu") and session.session.members("gpu") == [peer]
    session.session.drop("new")
    assert session.session.groups == {}  # a group with no member leaves no entry


# ---------------------------------------------------------------------------- call_any


def test_call_any_goes_to_the_member_with_the_fewest_calls_in_flight(main, member):
    w0, w1, w2 = member("w0"), member("w1"), member("w2")
    seen = Inbox()
    for w in (w0, w1, w2):
        holder(w, seen)
    # Counted from the moment they are sent, whether or not their handlers have started.
    holds = [main.main_call_render("w0", 1, channel="hold"), main.main_call_render("w0", 2, channel="hold"),
             main.main_call_render("w1", 3, channel="hold")]
    for i in range(3):  # w2 has none in flight: it takes each, however often it was picked before
        assert wait_until(lambda: loads(main) == {"w0": 2, "w1": 1, "w2": 0}, WAIT)
        assert main.call_any("gpu", i, channel="job").result(WAIT) == ("w2", "main", i)
    for future in holds:
        assert future.cancel()
    assert wait_until(lambda: idle(main, w0, w1, w2), WAIT)


def test_members_with_as_few_calls_in_flight_take_calls_in_turn(main, member):
    windows = [member(f"w{i}") for i in range(3)]
    picks = []
    for i in range(9):
        assert wait_until(lambda: not any(loads(main).values()), WAIT)
        picks.append(main.call_any("gpu", i, channel="job").result(WAIT)[0])
    assert sorted(picks[:3]) == ["w0", "w1", "w2"]
    assert picks == picks[:3] * 3
    assert wait_until(lambda: idle(main, *windows), WAIT)


def test_window_to_window_calls_the_main_carries_count_in_a_members_load(main, member, zprokit_window):
    w0, w1 = member("w0"), member("w1")
    caller = zprokit_window("caller")
    seen = Inbox()
    holder(w0, seen)
    held = caller.render_call_render("w0", "routed", channel="hold", timeout=30)
    assert seen.get(WAIT) == ("w0", "routed")
    assert wait_until(lambda: loads(main) == {"w0": 1, "w1": 0, "caller": 0}, WAIT)
    assert main.call_any("gpu", 1, channel="job").result(WAIT)[0] == "w1"
    assert held.cancel()
    assert wait_until(lambda: idle(main, w0, w1, caller), WAIT)


def test_a_member_not_ready_yet_is_picked_only_when_no_ready_one_is_left(main, member):
    busy, late = member("busy"), member("late", ready=False)  # late: as a created window still setting up
    seen = Inbox()
    holder(busy, seen)
    held = main.main_call_render("busy", None, channel="hold", timeout=30)
    assert wait_until(lambda: loads(main) == {"busy": 1, "late": 0}, WAIT)
    assert main.call_any("gpu", 1, channel="job").result(WAIT)[0] == "busy"  # more loaded, but ready
    assert main.call_any("gpu", 2, channel="job", retries=1).result(WAIT)[0] == "busy"
    late.ready()
    assert wait_until(lambda: main.get_window("late").ready, WAIT)
    assert wait_until(lambda: loads(main) == {"busy": 1, "late": 0}, WAIT)
    assert main.call_any("gpu", 3, channel="job").result(WAIT)[0] == "late"
    assert held.cancel()
    assert wait_until(lambda: idle(main, busy, late), WAIT)
    late_only = member("solo", groups=("solo",), ready=False)
    assert main.call_any("solo", 4, channel="job").result(WAIT) == ("solo", "main", 4)  # none ready: it is taken
    assert wait_until(lambda: idle(main, late_only), WAIT)


def test_call_any_of_a_group_with_no_live_member_raises_window_not_found_at_once(main, member):
    with pytest.raises(WindowNotFound, match="no window in group 'gpu'") as info:
        main.call_any("gpu", 1)
    assert info.value.name == "gpu"
    w = member("w", groups=("cpu",))
    with pytest.raises(WindowNotFound):
        main.call_any("gpu", 1)
    assert main.call_any("cpu", 1, channel="job").result(WAIT) == ("w", "main", 1)
    w.close()
    assert wait_until(lambda: not main.has_window("w"), WAIT)
    with pytest.raises(WindowNotFound, match="no window in group 'cpu'"):
        main.call_any("cpu", 1)
    assert idle(main)


def test_a_call_any_whose_member_is_killed_goes_to_another_member(main):
    reports = Inbox()
    main.on_msg_from_render(lambda event, what: reports.put(what), channel="report")
    k0 = main.create_window("k0", "_targets:group_member", env=ENV, groups=("gpu",))
    k1 = main.create_window("k1", "_targets:group_member", env=ENV, groups=("gpu",))
    main.wait_for_window("k0", START)
    main.wait_for_window("k1", START)
    held = main.main_call_render("k1", None, channel="hold", timeout=30)  # so k0 is the least loaded
    assert wait_until(lambda: loads(main) == {"k0": 0, "k1": 1}, WAIT)
    future = main.call_any("gpu", "k0", channel="stall", retries=1, timeout=30)
    assert reports.get(WAIT) == ("stalled", "k0", k0.pid)
    os.kill(k0.pid, signal.SIGKILL)  # gone without a goodbye, the call pending
    assert future.result(WAIT) == "k1"  # the retry: k1 is not named, so it answers
    assert k0.join(WAIT) == -signal.SIGKILL
    assert held.cancel()
    assert wait_until(lambda: idle(main) and not main.has_window("k0"), WAIT)
    assert k1.is_alive()


def test_retries_spent_fail_with_peer_lost(main, member):
    w0, w1 = member("w0"), member("w1")
    release, seen = threading.Event(), Inbox()
    stall_first([w0, w1], release, seen)
    future = main.call_any("gpu", None, channel="stall", timeout=30)  # retries=0
    first = seen.get(WAIT)
    leave_mid_call(main, {"w0": w0, "w1": w1}[first], release)
    with pytest.raises(PeerLost):
        future.result(WAIT)
    assert seen.items == [first]  # not sent to the other member
    assert wait_until(lambda: idle(main, w1 if first == "w0" else w0), WAIT)


def test_a_member_that_left_with_the_call_is_not_tried_again(main, member):
    w0, w1 = member("w0"), member("w1")
    first_release, second_release, seen = threading.Event(), threading.Event(), Inbox()
    stall_first([w0], first_release, seen)
    stall_first([w1], second_release, seen)
    windows = {"w0": (w0, first_release), "w1": (w1, second_release)}
    future = main.call_any("gpu", None, channel="stall", retries=5, timeout=30)
    first = seen.get(WAIT)
    leave_mid_call(main, *windows[first])
    second = seen.get(WAIT)
    assert second != first
    leave_mid_call(main, *windows[second])
    with pytest.raises(PeerLost):  # no member left: retries remain, but the PeerLost stands
        future.result(WAIT)
    assert len(seen) == 2
    assert wait_until(lambda: idle(main), WAIT)


def test_cancel_of_call_any_reaches_the_members_handler(main, member):
    w0, w1 = member("w0"), member("w1")
    seen = Inbox()
    holder(w0, seen)
    holder(w1, seen)
    future = main.call_any("gpu", "job", channel="hold", retries=3, timeout=30)
    name, _ = seen.get(WAIT)
    assert future.cancel() is True
    assert future.cancelled()
    assert wait_until(lambda: idle(main, w0, w1), WAIT)
    assert len(seen) == 1  # a cancelled call is never sent on


# ---------------------------------------------------------------------------- call_all


def test_call_all_gives_every_members_answer_or_exception_within_one_timeout(main, member):
    fine, failing, slow = member("fine"), member("failing"), member("slow")
    failing.on_msg_from_main(lambda event, args: 1 / 0, channel="mixed")
    fine.on_msg_from_main(lambda event, args: args * 2, channel="mixed")
    told = Inbox()
    slow.on_msg_from_main(lambda event, args: told.put(event.cancelled.wait(WAIT)), channel="mixed")
    results = main.call_all(21, group="gpu", channel="mixed", timeout=1.0).result(WAIT)
    assert list(results) == ["fine", "failing", "slow"]  # in the order they joined
    assert results["fine"] == 42
    assert isinstance(results["failing"], RemoteError) and results["failing"].remote_type == "ZeroDivisionError"
    assert isinstance(results["slow"], Timeout)
    assert told.get(WAIT) is True  # the slow member was told its caller gave up
    assert wait_until(lambda: idle(main, fine, failing, slow), WAIT)


def test_call_all_without_a_group_reaches_every_window(main, member, zprokit_window):
    gpu, cpu = member("gpu-0"), member("cpu-0", groups=("cpu",))
    loner = zprokit_window("loner")
    loner.on_msg_from_main(lambda event, args: ("loner", args), channel="job")
    assert main.call_all("hi", channel="job").result(WAIT) == {
        "gpu-0": ("gpu-0", "main", "hi"), "cpu-0": ("cpu-0", "main", "hi"), "loner": ("loner", "hi")}
    assert main.call_all("hi", group="cpu", channel="job").result(WAIT) == {"cpu-0": ("cpu-0", "main", "hi")}
    assert wait_until(lambda: idle(main, gpu, cpu, loner), WAIT)


def test_call_all_of_a_group_with_no_member_is_an_empty_dict(main, member):
    member("w", groups=("cpu",))
    future = main.call_all(1, group="gpu")
    assert future.done() and future.result() == {}
    assert idle(main)


def test_cancel_of_call_all_cancels_every_members_call(main, member):
    windows = [member(f"w{i}") for i in range(3)]
    seen = Inbox()
    for w in windows:
        holder(w, seen)
    future = main.call_all("job", group="gpu", channel="hold", timeout=30)
    assert sorted(name for name, _ in seen.wait_for(3, WAIT)) == ["w0", "w1", "w2"]
    assert future.cancel() is True
    assert wait_until(lambda: idle(main, *windows), WAIT)  # each handler saw event.cancelled, and returned


# ---------------------------------------------------------------------------- render_call_any


def test_render_call_any_goes_through_the_main_to_members_in_turn(main, member, zprokit_window):
    w0, w1 = member("w0"), member("w1")
    caller = zprokit_window("caller")
    picks = []
    for i in range(4):
        assert wait_until(lambda: not any(loads(main).values()), WAIT)
        name, sender, args = caller.render_call_any("gpu", i, channel="job").result(WAIT)
        assert (sender, args) == ("caller", i)  # the callee sees an ordinary routed request
        picks.append(name)
    assert sorted(picks[:2]) == ["w0", "w1"] and picks == picks[:2] * 2
    assert wait_until(lambda: idle(main, w0, w1, caller), WAIT)


def test_render_call_any_with_retries_goes_to_another_member_when_its_member_leaves(main, member, zprokit_window):
    w0, w1 = member("w0"), member("w1")
    caller = zprokit_window("caller")
    release, seen = threading.Event(), Inbox()
    stall_first([w0, w1], release, seen)
    # The member that gets it first stalls and leaves; the other answers at once (the release is set by then).
    future = caller.render_call_any("gpu", None, channel="stall", retries=1, timeout=30)
    first = seen.get(WAIT)
    other = "w1" if first == "w0" else "w0"
    leave_mid_call(main, {"w0": w0, "w1": w1}[first], release)
    assert future.result(WAIT) == other
    assert seen.items == [first, other]
    assert wait_until(lambda: idle(main, caller, {"w0": w0, "w1": w1}[other]), WAIT)


def test_render_call_any_with_no_retry_left_fails_with_peer_lost(main, member, zprokit_window):
    w0, w1 = member("w0"), member("w1")
    caller = zprokit_window("caller")
    release, seen = threading.Event(), Inbox()
    stall_first([w0, w1], release, seen)
    future = caller.render_call_any("gpu", None, channel="stall", timeout=30)
    first = seen.get(WAIT)
    leave_mid_call(main, {"w0": w0, "w1": w1}[first], release)
    with pytest.raises(PeerLost):
        future.result(WAIT)
    assert seen.items == [first]
    assert wait_until(lambda: idle(main, caller, w1 if first == "w0" else w0), WAIT)


def test_render_call_any_of_an_empty_group_fails_with_window_not_found(main, zprokit_window):
    caller = zprokit_window("caller")
    with pytest.raises(WindowNotFound, match="no window in group 'gpu'") as info:
        caller.render_call_any("gpu", 1).result(WAIT)
    assert info.value.name == "gpu"
    assert idle(main, caller)


def test_cancel_of_render_call_any_reaches_the_members_handler(main, member, zprokit_window):
    w0 = member("w0")
    caller = zprokit_window("caller")
    seen = Inbox()
    holder(w0, seen)
    future = caller.render_call_any("gpu", "job", channel="hold", retries=2, timeout=30)
    assert seen.get(WAIT) == ("w0", "job")
    assert main.stats()["pending_routes"] == 1 and loads(main)["w0"] == 1
    assert future.cancel() is True
    assert wait_until(lambda: idle(main, w0, caller), WAIT)


# ---------------------------------------------------------------------------- module level and CLI


def test_the_module_level_functions_use_the_default_main_and_window():
    main = zprokit.init_ipc("tcp://127.0.0.1:0")
    try:
        window = zprokit.init_expose_in_main_world("member", main.endpoint, key=main.key, groups=("gpu",))
        try:
            window.on_msg_from_main(lambda event, args: args + 1)
            window.on_render_msg_to_render(lambda event, args: args + 2)
            assert main.get_window("member").groups == ("gpu",)
            assert zprokit.call_any("gpu", 1).result(WAIT) == 2
            assert zprokit.call_all(1, group="gpu").result(WAIT) == {"member": 2}
            assert zprokit.render_call_any("gpu", 1).result(WAIT) == 3  # to itself, through the main
            assert wait_until(lambda: idle(main, window), WAIT)
        finally:
            window.close()
    finally:
        main.close()


def test_zprokit_window_joins_groups_and_zprokit_windows_shows_them():
    with Main("tcp://127.0.0.1:0", key=KEY) as main:
        window = Background("window", "--name", "worker", "--group", "gpu", "--group", "batch",
                            "--connect", main.endpoint, "_cli_app:serve")
        try:
            window.expect(r"^ready$")
            assert main.get_window("worker").groups == ("gpu", "batch")
            listing = run_zprokit("windows", "--connect", main.endpoint)
            assert listing.returncode == 0, listing.stderr
            header, *rows = listing.stdout.splitlines()
            assert header.split() == ["NAME", "HOST", "PID", "UPTIME", "MESSAGES", "GROUPS"]
            assert [row.split()[0] for row in rows] == ["worker"]
            assert rows[0].split()[-1] == "gpu,batch"
            bad = run_zprokit("window", "--name", "w2", "--group", "", "--connect", main.endpoint, "_cli_app:serve")
            assert bad.returncode == 1 and "non-empty" in bad.stderr
        finally:
            window.close()
