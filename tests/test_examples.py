"""The examples run as a user runs them, and the docker demo's recipe names code that exists.

Each script in ``examples/`` runs as ``python examples/NAME.py`` from the
repository root, in its own process, and must exit 0 having printed what it
promises. The docker-compose demo cannot run here (no Docker engine), so its
files are read instead: the commands the services run must name the
example app's functions, and the image must not take the key in.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
import threading

import pytest

from conftest import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # examples/ is not installed; `python -m pytest` from the root finds it, plain `pytest` may not
    sys.path.insert(0, ROOT)

from examples import docker_app  # noqa: E402
EXAMPLES_DIR = os.path.join(ROOT, "examples")
DOCKER_DIR = os.path.join(ROOT, "docker")

# script -> what its stdout must contain
EXAMPLES = {
    "main_render_reply.py": ["render: Main have get data is sendMsgToMain Hello"],
    "main_to_render.py": ["render: msg from main (from main)"],
    "render_to_render.py": [
        "render: 'Hello Work' delivered to 'work'",
        "work: 'Hello Work' from 'render'",
    ],
    "hidden_work_window.py": [
        "work: 15 primes below 50",
        "main: work found [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47]",
        "work: closed by the main",
        "main: the work window exited with status 0",
    ],
    "asyncio_example.py": [f"render: https://example.org/page/{i} -> 200 OK" for i in range(1, 6)],
}
NOT_SCRIPTS = {"__init__.py", "docker_app.py"}  # a package marker, and the app the docker demo runs


def test_every_example_script_is_run_here() -> None:
    scripts = {f for f in os.listdir(EXAMPLES_DIR) if f.endswith(".py")} - NOT_SCRIPTS
    assert scripts == set(EXAMPLES)


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs_and_prints_what_it_promises(script: str) -> None:
    # Standalone, as documented: nothing from a surrounding zprokit setup leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZPROKIT_")}
    proc = subprocess.run(
        [sys.executable, os.path.join("examples", script)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    report = f"exit status {proc.returncode}\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, report
    for text in EXAMPLES[script]:
        # Not whole lines: windows print from processes of their own, and with PYTHONUNBUFFERED
        # one's line and another's newline may interleave.
        assert text in proc.stdout, report
    assert "Traceback" not in proc.stderr, report


# --- the docker demo's app, in process ---------------------------------------------------------


def test_docker_app_workers_get_work_and_serve_the_main(zprokit_main, zprokit_window, capsys) -> None:
    docker_app.setup(zprokit_main)
    windows = [zprokit_window("worker-a"), zprokit_window("worker-b")]
    workers = [threading.Thread(target=docker_app.worker, args=(w,), name=f"app-{w.name}") for w in windows]
    output: list[str] = []

    def printed(*lines: str) -> bool:
        output.append(capsys.readouterr().out)
        return all(line in "".join(output) for line in lines)

    for t in workers:
        t.start()
    try:
        # On "ready", setup's handler has each worker square the next number: 1 and 2, in either order.
        assert wait_until(
            lambda: printed("main: worker-a connected", "main: worker-b connected", "worker-a: ready, and squared",
                            "worker-b: ready, and squared"),
            10,
        ), "".join(output)
        assert sorted(re.findall(r"ready, and squared (\d+) for the main", "".join(output))) == ["1", "2"]
        assert zprokit_main.main_call_render("worker-b", 12, channel="square").result(10) == 144
    finally:
        for w in windows:
            w.close()
        for t in workers:
            t.join(10)
    assert not any(t.is_alive() for t in workers), "worker() should return once its window is closed"


# --- the docker demo's files ---------------------------------------------------------------------


def _compose_services(text: str) -> dict[str, dict[str, str]]:
    """A tiny reader for our docker-compose.yml: each service's one-line scalar keys.

    Enough for this file (two-space indents, one-line commands), not for YAML
    at large; a command that outgrows it makes this test fail, not pass.
    """
    services: dict[str, dict[str, str]] = {}
    section = service = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        key, _, value = line.strip().partition(":")
        if indent == 0:
            section = key
        elif section == "services" and indent == 2:
            service = key
            services[service] = {}
        elif section == "services" and indent == 4 and value.strip():
            services[service][key] = value.strip()
    return services


def _zprokit_argv(command: str) -> list[str]:
    """The zprokit command line a compose ``command:`` runs, through ``sh -c '...'`` if there is one."""
    argv = shlex.split(command.replace("$$", "$"))  # "$$" is compose's escape for "$"
    if argv[:2] == ["sh", "-c"]:
        argv = shlex.split(argv[2])
        if argv[0] == "exec":
            argv = argv[1:]
    return argv


def _option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def _import_target(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def test_compose_services_run_the_example_app() -> None:
    with open(os.path.join(DOCKER_DIR, "docker-compose.yml")) as f:
        services = _compose_services(f.read())
    assert set(services) == {"main", "worker"}
    main = _zprokit_argv(services["main"]["command"])
    worker = _zprokit_argv(services["worker"]["command"])

    assert main[:2] == ["zprokit", "main"]
    assert _option(main, "--bind") == "tcp://0.0.0.0:5555"
    assert _option(main, "--pub-bind") == "tcp://0.0.0.0:5556"
    assert main[-1] == "examples.docker_app:setup"

    assert worker[:2] == ["zprokit", "window"]
    assert _option(worker, "--connect") == "tcp://main:5555"  # the main service, by its compose name
    assert "$HOSTNAME" in _option(worker, "--name")  # unique per replica, so --scale works
    assert worker[-1] == "examples.docker_app:worker"

    for argv in (main, worker):
        assert _option(argv, "--key-file") == "/run/secrets/zprokit_key"
        assert _import_target(argv[-1]) is getattr(docker_app, argv[-1].rpartition(":")[2])


def test_compose_key_is_a_secret_kept_out_of_git_and_the_image() -> None:
    with open(os.path.join(DOCKER_DIR, "docker-compose.yml")) as f:
        compose = f.read()
    assert "  zprokit_key:\n    file: ./zprokit.key\n" in compose
    with open(os.path.join(DOCKER_DIR, ".gitignore")) as f:
        assert "zprokit.key" in f.read().split()
    with open(os.path.join(DOCKER_DIR, "Dockerfile")) as f:
        copies = [line.split()[1:-1] for line in f if line.startswith("COPY ")]
    sources = [src for srcs in copies for src in srcs]
    assert sources, "the Dockerfile copies nothing?"
    for src in sources:
        assert os.path.exists(os.path.join(ROOT, src)), f"the Dockerfile copies {src}, which is not in the repository"
        assert not src.startswith(("docker", ".")), f"the Dockerfile copies {src}: the key could go with it"
    assert "examples/" in sources  # the app the services name must be in the image
