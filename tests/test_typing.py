"""Users' code type-checks: ``mypy --strict`` on a small program that uses zprokit.

The decorators keep the decorated function's own type (bare and called
forms, on ``Main``, ``Window`` and the module-level functions), futures say
what they resolve to, ``create_window`` returns a ``WindowProcess`` and
``stats()`` a ``TypedDict``. The program is only checked, never run.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="mypy is not installed (it is in the `test` extra: pip install -e '.[test]')")

import zprokit  # noqa: E402

pytestmark = pytest.mark.timeout(120)

USER_CODE = '''
from __future__ import annotations

from typing import Any

from typing_extensions import assert_type

import zprokit
from zprokit import Event, Main, ReplyFuture, Window, WindowProcess
from zprokit._stats import MainStats, WindowStats


async def on_main(main: Main, event: Event) -> None:
    @main.on_msg_from_render
    def bare(event: Event, args: list[int]) -> int:
        return sum(args)

    @main.on_msg_from_render(channel="sum", replace=True)
    def called(event: Event, args: list[int]) -> int:
        return sum(args)

    @main.on_msg_from_render("product")
    def positional(event: Event, args: tuple[int, int]) -> int:
        return args[0] * args[1]

    @main.on_msg_from_render(channel="slow", inline=False)
    async def coroutine(event: Event, n: int) -> str:
        return str(n)

    def plain(event: Event, args: str) -> str:
        return args.upper()

    assert_type(bare(event, [1, 2]), int)
    assert_type(called(event, [1, 2]), int)
    assert_type(positional(event, (2, 3)), int)
    assert_type(await coroutine(event, 1), str)
    registered = main.on_msg_from_render(plain, channel="upper")  # a plain call returns the handler too
    assert_type(registered(event, "x"), str)
    # Arguments are checked against the signature: were `bare` untyped (Any), these ignores
    # would be unused, which --strict reports.
    bare(event, "not a list")  # type: ignore[arg-type]
    bare(event)  # type: ignore[call-arg]

    assert_type(main.main_call_render("w", 1), ReplyFuture[Any])
    assert_type(main.main_call_render("w", 1).result(1.0), Any)
    assert_type(main.call_any("gpu", 1, retries=2), ReplyFuture[Any])
    assert_type(main.call_all(1, group="gpu").result(1.0), dict[str, Any])
    assert_type(main.create_window("w", "pkg.mod:target"), WindowProcess)
    assert_type(main.stats(), MainStats)
    assert_type(main.stats()["rejected"], dict[str, int])
    assert_type(main.stats()["windows"], int)


def on_window(window: Window, event: Event) -> None:
    @window.on_msg_from_main
    def from_main(event: Event, n: int) -> int:
        return n * 2

    @window.on_msg_from_main(channel="double")
    def double(event: Event, n: int) -> int:
        return n * 2

    @window.on_render_msg_to_render(channel="sum")
    def total(event: Event, numbers: list[int]) -> int:
        return sum(numbers)

    @window.on_msg_from_other_render("other")
    def other(event: Event, text: str) -> None:
        pass

    @window.on_broadcast
    def every(event: Event, msg: object) -> None:
        pass

    @window.on_broadcast("news")
    def news(event: Event, msg: str) -> None:
        pass

    @window.on_broadcast(topic="news")
    def news_too(event: Event, msg: str) -> None:
        pass

    assert_type(from_main(event, 1), int)
    assert_type(double(event, 1), int)
    assert_type(total(event, [1]), int)
    assert_type(other(event, "x"), None)
    assert_type(every(event, 1), None)
    assert_type(news(event, "x"), None)
    assert_type(news_too(event, "x"), None)
    total(event, "not a list")  # type: ignore[arg-type]

    assert_type(window.render_msg_to_main(1).result(), Any)
    assert_type(window.render_msg_to_main(1), ReplyFuture[Any])
    assert_type(window.render_msg_to_render("work", 1), ReplyFuture[None])
    assert_type(window.render_msg_to_render("work", 1).result(1.0), None)
    assert_type(window.render_call_render("work", 1), ReplyFuture[Any])
    assert_type(window.render_call_any("gpu", 1, retries=1), ReplyFuture[Any])
    assert_type(window.stats(), WindowStats)
    assert_type(window.stats()["late_replies"], int)


async def awaiting(window: Window) -> None:
    assert_type(await window.render_msg_to_main(1), Any)
    assert_type(await window.render_msg_to_render("work", 1), None)
    assert_type(await zprokit.render_msg_to_render("work", 1), None)


def module_level(event: Event) -> None:
    @zprokit.on_msg_from_render
    def bare(event: Event, args: int) -> int:
        return args

    @zprokit.on_msg_from_render(channel="sum")
    def called(event: Event, args: list[int]) -> int:
        return sum(args)

    @zprokit.on_msg_from_main(channel="c")
    def from_main(event: Event, args: int) -> str:
        return str(args)

    @zprokit.on_render_msg_to_render
    def from_render(event: Event, args: int) -> int:
        return args

    @zprokit.on_msg_from_other_render(channel="c")
    def from_other(event: Event, args: int) -> int:
        return args

    @zprokit.on_broadcast(topic="news")
    def news(event: Event, msg: str) -> str:
        return msg

    assert_type(bare(event, 1), int)
    assert_type(called(event, [1]), int)
    assert_type(from_main(event, 1), str)
    assert_type(from_render(event, 1), int)
    assert_type(from_other(event, 1), int)
    assert_type(news(event, "x"), str)

    assert_type(zprokit.render_msg_to_main(1).result(), Any)
    assert_type(zprokit.send_msg_to_main(1), ReplyFuture[Any])
    assert_type(zprokit.render_msg_to_render("work", 1), ReplyFuture[None])
    assert_type(zprokit.send_msg_to_other_render("work", 1), ReplyFuture[None])
    assert_type(zprokit.render_call_render("work", 1), ReplyFuture[Any])
    assert_type(zprokit.main_call_render("work", 1), ReplyFuture[Any])
    assert_type(zprokit.call_any("gpu", 1), ReplyFuture[Any])
    assert_type(zprokit.call_all(1), ReplyFuture[dict[str, Any]])
    assert_type(zprokit.render_call_any("gpu", 1), ReplyFuture[Any])
    assert_type(zprokit.create_window("work", "pkg.mod:target"), WindowProcess)


def own_future() -> None:
    future: ReplyFuture[int] = ReplyFuture("mine")
    assert_type(future.result(), int)
'''


def _mypy_path() -> str:
    """A ``mypy_path`` line for where zprokit is: its checkout (an editable install's import
    hook is invisible to mypy), or nothing when it is installed in site-packages, where mypy
    looks by itself."""
    root = Path(zprokit.__file__).resolve().parent.parent
    installed = [Path(p).resolve() for p in site.getsitepackages() if os.path.isdir(p)]
    return "" if root in installed else f"mypy_path = {root}"


def test_user_code_type_checks_under_mypy_strict(tmp_path):
    (tmp_path / "user_code.py").write_text(textwrap.dedent(USER_CODE))
    # zprokit's own modules are checked as an installed package's are: their types are used,
    # their own errors are not this test's (CI runs `mypy --strict -p zprokit` for those).
    (tmp_path / "mypy.ini").write_text("\n".join([
        "[mypy]",
        "strict = True",
        "warn_unused_ignores = True",
        _mypy_path(),
        f"cache_dir = {tmp_path / '.mypy_cache'}",
        "[mypy-zprokit.*]",
        "follow_imports = silent",
        "",
    ]))
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(tmp_path / "mypy.ini"), "user_code.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=110,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout, result.stdout


def test_the_package_type_checks_under_mypy_strict(tmp_path):
    """``mypy --strict -p zprokit``: the package's own annotations hold (users' code relies on them)."""
    root = Path(zprokit.__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / ".mypy_cache"), "-p", "zprokit"],
        cwd=root, env=env, capture_output=True, text=True, timeout=110,
    )
    assert result.returncode == 0, result.stdout + result.stderr
