"""docker/docker-compose.yml, read by the tests: the commands its services run.

tests/test_examples.py checks the recipe against the repository, and
tests/test_netns.py runs the very same commands on network-namespace hosts,
so the compose file and what the tests run cannot drift apart.
"""

from __future__ import annotations

import os
import shlex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPOSE_FILE = os.path.join(ROOT, "docker", "docker-compose.yml")


def compose_services(text: str) -> dict[str, dict[str, str]]:
    """A tiny reader for our docker-compose.yml: each service's one-line scalar keys.

    Enough for this file (two-space indents, one-line commands), not for YAML
    at large; a command that outgrows it makes the tests fail, not pass.
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


def zprokit_argv(command: str) -> list[str]:
    """The zprokit command line a compose ``command:`` runs, through ``sh -c '...'`` if there is one."""
    argv = shlex.split(command.replace("$$", "$"))  # "$$" is compose's escape for "$"
    if argv[:2] == ["sh", "-c"]:
        argv = shlex.split(argv[2])
        if argv[0] == "exec":
            argv = argv[1:]
    return argv


def service_argv(service: str, path: str = COMPOSE_FILE) -> list[str]:
    """The zprokit command line of ``service`` in the compose file."""
    with open(path) as f:
        return zprokit_argv(compose_services(f.read())[service]["command"])


def option(argv: list[str], flag: str) -> str:
    """The value after ``flag`` in ``argv``."""
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]
