"""Hosts as Linux network namespaces, for tests/test_netns.py.

A ``Network`` is a bridge in a namespace of its own and any number of
*hosts*, each a namespace with one veth link (``eth0``) to the bridge and an
address of its own in ``10.231.N.0/24``. Everything is created inside those
namespaces: the bridge, both ends of each veth (``ip -n NS link add ...
peer ... netns BRIDGE``) and the addresses, so nothing is added to the
machine's own network namespace. Names carry a random tag
(``zp-<tag>-<host>``), so runs side by side never meet.

Processes run on a host through ``ip netns exec NS argv``; ``close()``
kills every process left in the namespaces (whoever started it) and deletes
them, which removes the links too. It tries every step and reports the
failures at the end, so one stuck step does not leave the rest behind.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from typing import Callable, Sequence

REASON = "needs root and the ip command (network namespaces)"
DEADLINE = 15.0  # seconds any one expected line or exit may take
IP_TIMEOUT = 10.0


def unavailable() -> str | None:
    """Why namespaces cannot be used here (the skip reason, with the cause), or ``None`` if they can."""
    if os.geteuid() != 0:
        return f"{REASON}: not root"
    if shutil.which("ip") is None:
        return f"{REASON}: no ip command"
    probe = f"zp-{secrets.token_hex(3)}-check"
    try:
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=IP_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{REASON}: ip netns add failed: {e}"
    if made.returncode != 0:
        return f"{REASON}: ip netns add failed: {made.stderr.strip()}"
    try:  # the kinds of link the tests make, inside the probe namespace only
        ip("link", "add", "br0", "type", "bridge", ns=probe)
        ip("link", "add", "v0", "type", "veth", "peer", "name", "v1", ns=probe)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        return f"{REASON}: {e}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=IP_TIMEOUT)
    return None


def ip(*args: str, ns: str | None = None) -> str:
    """Run ``ip [-n NS] ARGS``; its stdout. Raises ``RuntimeError`` with ip's message on failure."""
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


class Host:
    """One namespace on the network: ``name`` (short), ``ns`` (the namespace), ``address``, ``dev``."""

    dev = "eth0"

    def __init__(self, network: "Network", name: str, ns: str, address: str) -> None:
        self.network = network
        self.name = name
        self.ns = ns
        self.address = address

    def cut(self) -> None:
        """Take this host's link down, from inside the host (``ip netns exec NS ip link set eth0 down``)."""
        self.exec_ip("link", "set", self.dev, "down")

    def heal(self) -> None:
        self.exec_ip("link", "set", self.dev, "up")

    def exec_ip(self, *args: str) -> None:
        done = subprocess.run(["ip", "netns", "exec", self.ns, "ip", *args], capture_output=True, text=True,
                              timeout=IP_TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(f"ip netns exec {self.ns} ip {' '.join(args)}: {done.stderr.strip()}")

    def pids(self) -> list[int]:
        """Every process in this host's namespace."""
        try:
            return [int(p) for p in ip("netns", "pids", self.ns).split()]
        except RuntimeError:
            return []

    def kill_all(self, timeout: float = DEADLINE) -> list[int]:
        """SIGKILL every process on this host (a host lost at once); the pids, once they are gone."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.network.processes:
            if proc.host is self and proc.proc.pid in pids:
                proc.proc.wait(timeout)  # reap our own children, so they are gone, not zombies
        deadline = time.monotonic() + timeout
        while self.pids():
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes on {self.ns} outlived SIGKILL: {self.pids()}")
            time.sleep(0.01)
        return pids

    def run(self, argv: Sequence[str], env: dict[str, str] | None = None, stdin: bool = False) -> "HostProcess":
        """Start ``argv`` on this host; its output is read line by line (``HostProcess.expect``)."""
        proc = HostProcess(self, argv, env, stdin)
        self.network.processes.append(proc)
        return proc

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address} ({self.ns})>"


class Network:
    """A bridge in a namespace of its own, and hosts wired to it. Also a context manager."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.subnet = f"10.231.{random.randrange(256)}"
        self.bridge_ns = f"zp-{self.tag}-br"
        self.hosts: dict[str, Host] = {}
        self.processes: list[HostProcess] = []
        self._namespaces: list[str] = []
        try:
            self._add_namespace(self.bridge_ns)
            ip("link", "add", "br0", "type", "bridge", ns=self.bridge_ns)
            ip("link", "set", "br0", "up", ns=self.bridge_ns)
        except BaseException:
            self.close()
            raise

    def _add_namespace(self, ns: str) -> None:
        ip("netns", "add", ns)
        self._namespaces.append(ns)
        ip("link", "set", "lo", "up", ns=ns)

    def add_host(self, name: str) -> Host:
        """A new host ``name`` with the next address on the subnet."""
        ns = f"zp-{self.tag}-{name}"
        port = f"p-{name}"[:15]  # the bridge's end of the veth
        address = f"{self.subnet}.{10 + len(self.hosts)}"
        self._add_namespace(ns)
        ip("link", "add", Host.dev, "type", "veth", "peer", "name", port, "netns", self.bridge_ns, ns=ns)
        ip("link", "set", port, "master", "br0", "up", ns=self.bridge_ns)
        ip("addr", "add", f"{address}/24", "dev", Host.dev, ns=ns)
        ip("link", "set", Host.dev, "up", ns=ns)
        host = self.hosts[name] = Host(self, name, ns, address)
        return host

    def close(self) -> None:
        """Kill every process on every host, delete every namespace (and with them the links)."""
        errors = []
        for host in self.hosts.values():
            try:
                host.kill_all()
            except Exception as e:  # keep going: the namespaces must go in any case
                errors.append(f"{host.ns}: {e}")
        for proc in self.processes:
            try:
                proc.close()
            except Exception as e:
                errors.append(f"{proc}: {e}")
        for ns in reversed(self._namespaces):
            try:
                ip("netns", "del", ns)
            except Exception as e:
                errors.append(str(e))
        self._namespaces.clear()
        if errors:
            raise RuntimeError("network cleanup: " + "; ".join(errors))

    def __enter__(self) -> "Network":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HostProcess:
    """A process on a host: stdout lines kept with their arrival times, stderr kept too.

    ``expect`` searches the lines received since a ``mark()``, without
    consuming them, so several waits may look for lines that come in any order.
    """

    def __init__(self, host: Host, argv: Sequence[str], env: dict[str, str] | None, stdin: bool) -> None:
        self.host = host
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", host.ns, *argv], env=env, text=True,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.lines: list[tuple[float, str]] = []  # (time.monotonic() when read, line)
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._readers = [
            threading.Thread(target=self._read_stdout, name=f"netns-out-{host.name}", daemon=True),
            threading.Thread(target=self._read_stderr, name=f"netns-err-{host.name}", daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.errors.append(line.rstrip("\n"))

    def mark(self) -> int:
        """The number of lines so far: pass it to ``expect`` to look only at later ones."""
        with self._cond:
            return len(self.lines)

    def wait_line(self, predicate: Callable[[str], object], timeout: float = DEADLINE, since: int = 0,
                  what: str = "") -> tuple[float, str]:
        """The first line from index ``since`` on for which ``predicate`` is true, with its arrival time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            index = since
            while True:
                while index < len(self.lines):
                    when, line = self.lines[index]
                    index += 1
                    if predicate(line):
                        return when, line
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise AssertionError(
                        f"no line {what} from {self} within {timeout} s "
                        f"(exit status {self.proc.poll()});\n--- stdout\n" + "\n".join(l for _, l in self.lines)
                        + "\n--- stderr\n" + "\n".join(self.errors)
                    )
                self._cond.wait(left)

    def expect(self, pattern: str, timeout: float = DEADLINE, since: int = 0) -> tuple[float, re.Match[str]]:
        """The first line matching ``pattern`` (from index ``since`` on): its arrival time and the match."""
        regex = re.compile(pattern)
        when, line = self.wait_line(regex.search, timeout, since, what=f"like {pattern!r}")
        match = regex.search(line)
        assert match is not None
        return when, match

    def output(self) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float = DEADLINE) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Kill it if it still runs, reap it, and end the readers."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(DEADLINE)
        for reader in self._readers:
            reader.join(DEADLINE)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except BrokenPipeError:
                    pass

    def __repr__(self) -> str:
        return f"<{' '.join(self.argv[-3:])} on {self.host.name}, pid {self.proc.pid}>"
