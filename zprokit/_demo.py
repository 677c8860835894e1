"""``zprokit demo``: a main and two windows on this machine, every row of the API table once.

This process is the main. It starts two windows with ``create_window``:
"render" plays the seed page's renderer and "work" its hidden work window.
The main drives the windows' side of each step by calling their "step"
channel, and the windows tell the main what they received on its "report"
channel. So a transcript line is printed when a message has *arrived*, and
every check looks at what happened rather than at what was sent.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any, Callable, Mapping, TextIO, TypeVar

import zprokit
from zprokit import AuthenticationError, Main, NoHandler, RemoteError, Timeout, Window, WindowNotFound, ZprokitError

TIMEOUT = 5.0
WINDOWS = ("render", "work")
GROUPS = {"work": ("workers",)}  # the worker groups each window joins
E = TypeVar("E", bound=ZprokitError)


class DemoFailure(Exception):
    """A check saw something other than what the demo expects."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailure(message)


def raised(kind: type[E], call: Callable[[], Any]) -> E:
    """The ``kind`` of error that ``call()`` raises; ``DemoFailure`` if it raises none."""
    try:
        call()
    except kind as e:
        return e
    raise DemoFailure(f"expected {kind.__name__}, got no error")


# --- the windows: each runs in its own process, made by create_window ---------------


def _reporter(window: Window) -> Callable[[str, str, str, Any], None]:
    def report(what: str, sender: str, channel: str, payload: Any) -> None:
        window.render_msg_to_main((what, sender, channel, payload), channel="report").result(TIMEOUT)

    return report


def work(window: Window) -> None:
    """The hidden work window: answers calls and reports every message it hears."""
    report = _reporter(window)
    window.on_msg_from_main(lambda e, msg: report("message", e.sender, e.channel, msg))
    window.on_msg_from_main(lambda e, n: n * 2, channel="double")
    window.on_msg_from_main(lambda e, n: n / 0, channel="divide")
    window.on_msg_from_main(lambda e, seconds: time.sleep(seconds), channel="sleep")
    window.on_render_msg_to_render(lambda e, msg: report("message", e.sender, e.channel, msg))
    window.on_broadcast(lambda e, msg: report("broadcast", e.sender, e.topic, msg))  # every topic

    @window.on_render_msg_to_render(channel="sum")
    def total(event: zprokit.Event, numbers: list[int]) -> int:
        report("request", event.sender, event.channel, numbers)
        return sum(numbers)

    @window.on_msg_from_main(channel="squares")
    def squares(event: zprokit.Event, n: int) -> Any:  # a generator: it streams
        for i in range(1, n + 1):
            yield i * i

    @window.on_msg_from_main(channel="patient")
    def patient(event: zprokit.Event, _: Any) -> None:  # waits until its caller gives up
        report("started", event.sender, event.channel, None)
        report("cancelled", event.sender, event.channel, event.cancelled.wait(TIMEOUT))

    report("ready", window.name, "", None)
    window.wait_closed()  # until destroy_window


def render(window: Window) -> None:
    """The renderer: its steps are the main's to start, one at a time."""
    report = _reporter(window)
    def named(e: BaseException) -> tuple[str, str]:  # what the main can check
        return type(e).__name__, str(e)

    steps: dict[str, Callable[[], Any]] = {
        "hello": lambda: window.render_msg_to_main("sendMsgToMain Hello").result(TIMEOUT),
        "to work": lambda: window.render_msg_to_render("work", "Hello Work").result(TIMEOUT),
        "sum": lambda: window.render_call_render("work", [1, 2, 3], channel="sum").result(TIMEOUT),
        "any sum": lambda: window.render_call_any("workers", [4, 5, 6], channel="sum").result(TIMEOUT),
        "no handler": lambda: named(raised(ZprokitError, lambda: window.render_msg_to_main("?", channel="nowhere").result(TIMEOUT))),
        "to ghost": lambda: named(raised(ZprokitError, lambda: window.render_msg_to_render("ghost", "boo").result(TIMEOUT))),
        "async": lambda: window.render_msg_to_main([1, 2, 3], channel="slow_sum").result(TIMEOUT),
        "temp": lambda: window.render_msg_to_main("once", channel="temp").result(TIMEOUT),
        "temp again": lambda: named(raised(ZprokitError, lambda: window.render_msg_to_main("twice", channel="temp").result(TIMEOUT))),
        "stream": lambda: list(window.render_stream_from_main(5, channel="countdown", prefetch=2)),
    }
    window.on_msg_from_main(lambda e, step: steps[step](), channel="step")
    window.on_broadcast(lambda e, msg: report("broadcast", e.sender, e.topic, msg), topic="news")
    report("ready", window.name, "", None)
    window.wait_closed()  # until the main closes


# --- the main: this process ---------------------------------------------------------


class Transcript:
    """Prints who sent what to whom, and each check; counts the checks."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.passed = self.total = 0
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        with self._lock:
            print(text, file=self.out, flush=True)

    def line(self, sender: str, receiver: str, label: str, text: str) -> None:
        self.say(f"  {sender:>6} -> {receiver:<7} {label:<18} {text}")

    def check(self, name: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
        """Decorate a step to run it at once: ``ok`` and what it returned, or ``FAIL`` and why."""

        def run(step: Callable[[], str]) -> Callable[[], str]:
            try:
                detail, ok = step(), True
            except Exception as e:  # a failed check is reported, then the demo goes on
                detail, ok = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}", False
            self.total += 1
            self.passed += ok
            self.say(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
            return step

        return run


class Inbox:
    """Reports and presence events, taken by the main thread as they arrive."""

    def __init__(self) -> None:
        self._items: list[dict[str, Any]] = []
        self._cond = threading.Condition()

    def put(self, **item: Any) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def _find(self, match: dict[str, Any]) -> dict[str, Any] | None:
        return next((i for i in self._items if all(i.get(k) == v for k, v in match.items())), None)

    def has(self, **match: Any) -> bool:
        with self._cond:
            return self._find(match) is not None

    def take(self, **match: Any) -> dict[str, Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: self._find(match) is not None, TIMEOUT):
                raise DemoFailure(f"nothing like {match} arrived within {TIMEOUT} s")
            item: dict[str, Any] = self._find(match)  # type: ignore[assignment]
            self._items.remove(item)
            return item


def run(out: TextIO = sys.stdout) -> int:
    """Play the demo; 0 if every check passed."""
    t, inbox = Transcript(out), Inbox()
    main = zprokit.init_ipc("tcp://127.0.0.1:0", key=zprokit.generate_key(), request_timeout=TIMEOUT)
    try:
        t.say(f"zprokit demo: init_ipc() -> main on {main.endpoint}, a random key")
        _play(main, t, inbox)
    finally:
        main.close()
    t.say(f"demo: {t.passed}/{t.total} checks passed")
    return 0 if t.passed == t.total else 1


def _play(main: Main, t: Transcript, inbox: Inbox) -> None:
    served: list[str] = []  # one entry per request our handlers answered, for the stats() check

    @zprokit.on_msg_from_render
    def hello(event: zprokit.Event, args: Any) -> str:
        served.append(event.channel)
        t.line(event.sender, "main", f"[{event.channel}]", repr(args))
        return f"Main have get data is {args}"

    @zprokit.on_msg_from_render(channel="report")
    def on_report(event: zprokit.Event, report: tuple[str, str, str, Any]) -> None:
        served.append(event.channel)
        what, sender, channel, payload = report
        if what != "ready":
            t.line(sender, event.sender, f"[{channel}] {what}", repr(payload))
        inbox.put(what=what, sender=sender, receiver=event.sender, channel=channel, payload=payload)

    zprokit.on_window_connected(lambda info: inbox.put(what="connected", sender=info.name))
    zprokit.on_window_disconnected(lambda info: inbox.put(what="disconnected", sender=info.name))

    def step(name: str, what: str) -> Any:
        return zprokit.main_call_render(name, what, channel="step").result(2 * TIMEOUT)

    procs = {name: zprokit.create_window(name, f"zprokit._demo:{name}", groups=GROUPS.get(name, ()))
             for name in WINDOWS}

    @t.check("create_window + init_expose_in_main_world + on_window_connected")
    def started() -> str:
        for name in WINDOWS:
            inbox.take(what="connected", sender=name)
            inbox.take(what="ready", sender=name)
        return ", ".join(f"{name} (pid {proc.pid})" for name, proc in procs.items())

    @t.check("get_window / has_window / get_all_windows")
    def registry() -> str:
        names = [info.name for info in zprokit.get_all_windows()]
        info = zprokit.get_window("work")
        expect(sorted(names) == sorted(WINDOWS) and info is not None and info.pid == procs["work"].pid, f"{names} {info}")
        expect(zprokit.has_window("render") and not zprokit.has_window("ghost") and zprokit.get_window("ghost") is None,
               "has_window or get_window is wrong about 'ghost'")
        assert info is not None  # checked above
        return f"{names}, work is pid {info.pid} on {info.host}"

    @t.check("render_msg_to_main + on_msg_from_render (reply)")
    def render_to_main() -> str:
        got = step("render", "hello")
        t.line("main", "render", "reply", repr(got))
        expect(got == "Main have get data is sendMsgToMain Hello", f"reply {got!r}")
        return "the handler's return value came back"

    @t.check("main_msg_to_render + on_msg_from_main")
    def main_to_render() -> str:
        zprokit.main_msg_to_render("work", "msg from main")
        got = inbox.take(what="message", sender="main", receiver="work")
        expect(got["payload"] == "msg from main", f"work got {got['payload']!r}")
        return "work's callback got it, event.sender == 'main'"

    @t.check("main_call_render")
    def main_call() -> str:
        t.line("main", "work", "[double] call", "21")
        got = zprokit.main_call_render("work", 21, channel="double").result(TIMEOUT)
        t.line("work", "main", "reply", repr(got))
        expect(got == 42, f"reply {got!r}")
        return "answered by work's first callback on 'double'"

    @t.check("broadcast + on_broadcast (topic)")
    def broadcasts() -> str:
        zprokit.broadcast("goal!", topic="sports")
        zprokit.broadcast("sunny", topic="news.weather")
        for receiver, topic in (("work", "sports"), ("work", "news.weather"), ("render", "news.weather")):
            inbox.take(what="broadcast", receiver=receiver, channel=topic)
        # render's broadcasts are reported in order, so a 'sports' one would be here by now
        expect(not inbox.has(what="broadcast", receiver="render"), "render got 'sports' despite topic 'news'")
        return "work (topic '') got both, render (topic 'news') only news.weather"

    @t.check("render_msg_to_render + on_render_msg_to_render")
    def render_to_render() -> str:
        got = step("render", "to work")
        report = inbox.take(what="message", sender="render", receiver="work")
        expect(got is None and report["payload"] == "Hello Work", f"{got!r}, {report}")
        return "routed through the main, future -> None, event.sender == 'render'"

    @t.check("render_call_render")
    def render_call() -> str:
        got = step("render", "sum")
        t.line("work", "render", "reply", repr(got))
        inbox.take(what="request", sender="render", receiver="work", channel="sum")
        expect(got == 6, f"reply {got!r}")
        return "window to window request/reply"

    @t.check("call_any + call_all + render_call_any (worker groups)")
    def groups() -> str:
        info = zprokit.get_window("work")
        expect(info is not None and info.groups == ("workers",), f"work's groups: {info}")
        t.line("main", "workers", "[double] call_any", "21")
        got = zprokit.call_any("workers", 21, channel="double").result(TIMEOUT)
        t.line("work", "main", "reply", repr(got))
        every = zprokit.call_all(21, group="workers", channel="double").result(TIMEOUT)
        t.line("workers", "main", "call_all", repr(every))
        summed = step("render", "any sum")
        inbox.take(what="request", sender="render", receiver="work", channel="sum")
        t.line("work", "render", "reply", repr(summed))
        expect(got == 42 and every == {"work": 42} and summed == 15, f"{got!r}, {every!r}, {summed!r}")
        return "work joined 'workers': the least-loaded member answers; call_all gathers every member's answer"

    @t.check("NoHandler")
    def no_handler() -> str:
        error = step("render", "no handler")
        t.line("render", "main", "[nowhere] call", "'?'")
        t.line("main", "render", "error", ": ".join(error))
        e = raised(NoHandler, lambda: zprokit.main_call_render("work", 1, channel="nowhere").result(TIMEOUT))
        t.line("main", "work", "[nowhere] call", "1")
        t.line("work", "main", "error", f"NoHandler: {e}")
        expect(error[0] == "NoHandler", f"render got {error}")
        return "at once, both ways"

    @t.check("RemoteError")
    def remote_error() -> str:
        t.line("main", "work", "[divide] call", "1")
        e = raised(RemoteError, lambda: zprokit.main_call_render("work", 1, channel="divide").result(TIMEOUT))
        t.line("work", "main", "error", f"RemoteError: {e.remote_type}: {e.remote_message}")
        expect(e.remote_type.endswith("ZeroDivisionError") and e.origin == "work" and "n / 0" in e.remote_traceback, repr(e))
        return "with the remote type, message and traceback"

    @t.check("WindowNotFound")
    def not_found() -> str:
        e = raised(WindowNotFound, lambda: zprokit.main_msg_to_render("ghost", "boo"))
        t.line("main", "ghost", "[default] message", f"'boo' -> WindowNotFound: {e}")
        error = step("render", "to ghost")
        t.line("render", "ghost", "[default] message", f"'boo' -> {': '.join(error)}")
        expect(error[0] == "WindowNotFound", f"render got {error}")
        return "at once in main_msg_to_render, through the future in render_msg_to_render"

    @zprokit.on_msg_from_render(channel="slow_sum")
    async def slow_sum(event: zprokit.Event, numbers: list[int]) -> int:
        served.append(event.channel)
        await asyncio.sleep(0.05)  # an async def handler awaits; the main serves others meanwhile
        return sum(numbers)

    @t.check("async def handler (await)")
    def async_handler() -> str:
        t.line("render", "main", "[slow_sum] call", "[1, 2, 3]")
        got = step("render", "async")
        t.line("main", "render", "reply", repr(got))
        expect(got == 6, f"reply {got!r}")
        return "awaited on the main's asyncio thread, its return value the reply"

    @t.check("a timeout")
    def timeout() -> str:
        t.line("main", "work", "[sleep] call", "1.0, timeout=0.2")
        started = time.monotonic()
        e = raised(Timeout, lambda: zprokit.main_call_render("work", 1.0, channel="sleep", timeout=0.2).result())
        waited = time.monotonic() - started
        t.line("main", "main", "error", f"Timeout: {e}")
        expect(waited < 1.0 and isinstance(e, TimeoutError), f"waited {waited:.2f} s")
        expect(main.stats()["pending_requests"] == 0, "the timed-out call left an entry behind")
        return f"Timeout (a TimeoutError) after {waited:.2f} s; the call left nothing pending"

    @zprokit.on_msg_from_render(channel="countdown")
    def countdown(event: zprokit.Event, start: int) -> Any:  # a generator: it streams
        for n in range(start, 0, -1):
            t.line("main", event.sender, "[countdown] item", repr(n))
            yield n

    @t.check("streams: render_stream_from_main, main_stream_from_render")
    def streams() -> str:
        got = step("render", "stream")
        t.line("render", "main", "[countdown] took", repr(got))
        expect(got == [5, 4, 3, 2, 1], f"render took {got!r}")
        squares = list(zprokit.main_stream_from_render("work", 4, channel="squares", prefetch=2))
        t.line("work", "main", "[squares] items", repr(squares))
        expect(squares == [1, 4, 9, 16], f"main took {squares!r}")
        return "generator handlers and callbacks streamed, at most 2 items ahead of the consumer"

    @t.check("a cancellation reaches the handler")
    def cancellation() -> str:
        t.line("main", "work", "[patient] call", "None")
        future = zprokit.main_call_render("work", None, channel="patient", timeout=TIMEOUT)
        inbox.take(what="started", receiver="work", channel="patient")
        cancelled = future.cancel()
        t.line("main", "work", "cancel", repr(cancelled))
        told = inbox.take(what="cancelled", receiver="work", channel="patient")
        expect(cancelled and told["payload"] is True and future.cancelled(), f"{cancelled}, {told}")
        expect(main.stats()["pending_requests"] == 0, "the cancelled call left an entry behind")
        return "future.cancel() -> True; work's callback saw event.cancelled, nothing left pending"

    @t.check("off_msg_from_render")
    def off() -> str:
        def temp(event: zprokit.Event, args: Any) -> str:
            served.append(event.channel)
            return f"got {args}"

        zprokit.on_msg_from_render(temp, channel="temp")
        first = step("render", "temp")
        t.line("main", "render", "[temp] reply", repr(first))
        expect(zprokit.off_msg_from_render("temp"), "off_msg_from_render('temp') found no handler")
        error = step("render", "temp again")
        t.line("main", "render", "[temp] error", ": ".join(error))
        expect(first == "got once" and error[0] == "NoHandler", f"{first!r}, {error}")
        return "answered once; after off_msg_from_render, NoHandler at once"

    @t.check("main.stats()")
    def stats() -> str:
        s: Mapping[str, Any] = main.stats()
        keys = ("messages_in", "messages_out", "requests_served", "messages_routed", "windows")
        expect(s["windows"] == 2 and s["requests_served"] == len(served) and s["messages_routed"] == 3, str(s))
        expect(not any(s["rejected"].values()), f"rejected {s['rejected']}")
        return " ".join(f"{k}={s[k]}" for k in keys) + f" rejected={s['rejected']}"

    @t.check("a wrong key is refused")
    def wrong_key() -> str:
        before = main.stats()["rejected"]["bad_signature"]
        e = raised(AuthenticationError, lambda: Window("intruder", main.endpoint, key=zprokit.generate_key(), timeout=TIMEOUT))
        t.line("intruder", "main", "HELLO", f"signed with another key -> AuthenticationError: {e}")
        rejected = main.stats()["rejected"]["bad_signature"] - before
        expect(rejected == 1 and not zprokit.has_window("intruder"), f"rejected {rejected}")
        return "the main counted it (rejected['bad_signature'] += 1) and read nothing of it"

    @t.check("destroy_window + on_window_disconnected")
    def destroy() -> str:
        expect(zprokit.destroy_window("work"), "destroy_window('work') found nothing")
        inbox.take(what="disconnected", sender="work")
        code = procs["work"].join(TIMEOUT)
        expect(code == 0, f"work's process exit status {code}")
        expect([w.name for w in zprokit.get_all_windows()] == ["render"], "work is still registered")
        return "on_window_disconnected fired, work's process exited 0"

    @t.check("main.close()")
    def close() -> str:
        main.close()
        main.close()  # idempotent
        code = procs["render"].join(TIMEOUT)
        expect(code == 0, f"render's process exit status {code}")
        return "render closed with its main and exited 0"
