"""Hosts as Linux network namespaces, for tests/test_netns.py.

A ``Network`` is a bridge in a namespace of its own and any number of
*hosts*, each a namespace with one veth link (``eth0``) to the bridge and an
address of its own in ``10.231.N.0/24``. Everything is created inside those
namespaces: the bridge, both ends of each veth (``ip -n NS link add ...
peer ... netns BRIDGE``) and the addresses, so nothing is added to the
machine's own network namespace.

Names say who made them: ``zp-<pid>.<pidns>-<tag>-<host>``, the pid of the
test process and its pid namespace (its inode number), then a random tag.
A run that was killed (SIGKILL, a lost CI job) cannot clean up, so every
``Network`` first removes the namespaces whose owner is dead
(``remove_stale_namespaces``): it kills what still runs in them and deletes
them. A namespace whose owner is alive is never touched, nor one of another
pid namespace (whose pids we cannot judge), nor one named otherwise: runs side
by side never meet. Names have no length limit worth minding (a file name
under /run/netns); the links' names (``eth0``, ``p-<host>``) are separate and
short.

Processes run on a host through ``ip netns exec NS unshare --uts ...``: each
in a UTS namespace of its own whose host name is the host's name, as a
container's ``hostname`` is its own, so ``socket.gethostname()`` tells the
hosts apart (network namespaces alone share the machine's host name).
``close()`` kills every process left in the namespaces (whoever started it)
and deletes them, which removes the links too. It tries every step and
reports the failures at the end, so one stuck step does not leave the rest
behind.
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
PREFIX = "zp-"
# zp-<pid>.<pidns>-<tag>-<host>: the owner's pid and pid namespace, the run's tag, the host.
_OWNED = re.compile(r"^zp-(\d+)\.(\d+)-[0-9a-f]+-")
# Give the process its own UTS namespace and the host's name in it, then become argv ($0 is the name).
_SET_HOSTNAME = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"']


def pid_namespace() -> int:
    """Our pid namespace's inode number: the pids in namespace names mean something only within it."""
    return os.stat("/proc/self/ns/pid").st_ino


def namespace_name(tag: str, host: str, pid: int | None = None) -> str:
    """The name of ``host``'s namespace in the run ``tag`` of process ``pid`` (default: this one)."""
    return f"{PREFIX}{os.getpid() if pid is None else pid}.{pid_namespace()}-{tag}-{host}"


def owner(ns: str) -> tuple[int, int] | None:
    """The pid and pid namespace that made namespace ``ns``; ``None`` if its name does not say."""
    match = _OWNED.match(ns)
    return (int(match.group(1)), int(match.group(2))) if match else None


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie is not: it has ended, only its parent has not looked)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def namespaces() -> list[str]:
    """Every named network namespace on the machine (``ip netns list``)."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def namespace_pids(ns: str) -> list[int]:
    """Every process in namespace ``ns`` (``ip netns pids``); none if it is gone."""
    try:
        return [int(p) for p in ip("netns", "pids", ns).split()]
    except RuntimeError:
        return []


def kill_namespace(ns: str, timeout: float = DEADLINE) -> list[int]:
    """SIGKILL every process in ``ns`` and wait until none is left in it; their pids.

    A killed process leaves the namespace as it dies, zombie or not, so this
    does not wait for anyone to reap it.
    """
    pids = namespace_pids(ns)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while namespace_pids(ns):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes in {ns} outlived SIGKILL: {namespace_pids(ns)}")
        time.sleep(0.01)
    return pids


def remove_stale_namespaces() -> list[str]:
    """Delete the namespaces of test runs that are gone: every ``zp-<pid>.<pidns>-...`` of our pid
    namespace whose pid is not a live process, after killing what still runs in it. The names removed.

    Never one whose owner lives (a run side by side, or this one), nor one of another pid namespace,
    nor one whose name names no owner. Tries every namespace; raises ``RuntimeError`` with the
    failures at the end.
    """
    ours = pid_namespace()
    removed, errors = [], []
    for ns in namespaces():
        made_by = owner(ns)
        if made_by is None or made_by[1] != ours or pid_alive(made_by[0]):
            continue
        try:
            kill_namespace(ns)
            ip("netns", "del", ns)
            removed.append(ns)
        except Exception as e:
            if ns not in namespaces():  # another run removed it meanwhile
                continue
            errors.append(f"{ns}: {e}")
    if errors:
        raise RuntimeError("stale namespaces left: " + "; ".join(errors))
    return removed


def unavailable() -> str | None:
    """Why namespaces cannot be used here (the skip reason, with the cause), or ``None`` if they can."""
    if os.geteuid() != 0:
        return f"{REASON}: not root"
    for command in ("ip", "unshare", "hostname"):
        if shutil.which(command) is None:
            return f"{REASON}: no {command} command"
    # Named for its owner, like the hosts: if this run is killed before it deletes the probe,
    # the next one does (remove_stale_namespaces).
    probe = namespace_name(secrets.token_hex(3), "check")
    try:
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=IP_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{REASON}: ip netns add failed: {e}"
    if made.returncode != 0:
        return f"{REASON}: ip netns add failed: {made.stderr.strip()}"
    try:  # the kinds of link the tests make, inside the probe namespace only
        ip("link", "add", "br0", "type", "bridge", ns=probe)
        ip("link", "add", "v0", "type", "veth", "peer", "name", "v1", ns=probe)
        # A host name of its own, as every host process gets one (in a UTS namespace of its own).
        argv = ["ip", "netns", "exec", probe, *_SET_HOSTNAME, "zp-check", "hostname"]
        named = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT)
        if named.returncode != 0 or named.stdout.strip() != "zp-check":
            return f"{REASON}: {' '.join(argv)}: {(named.stderr or named.stdout).strip()}"
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
    """One namespace on the network: ``name`` (short, and its host name), ``ns`` (the namespace),
    ``address``, ``dev`` (its link), ``bridge_port`` (the bridge's end of that link)."""

    dev = "eth0"

    def __init__(self, network: "Network", name: str, ns: str, address: str, bridge_port: str) -> None:
        self.network = network
        self.name = name
        self.hostname = name
        self.ns = ns
        self.address = address
        self.bridge_port = bridge_port
        self._filtered = False  # drop_connection() set up filters (allow_all() removes them)

    def command(self, argv: Sequence[str]) -> list[str]:
        """The command that runs ``argv`` on this host: in its namespace, with its host name."""
        return ["ip", "netns", "exec", self.ns, *_SET_HOSTNAME, self.hostname, *argv]

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

    def tcp_connections(self) -> list[tuple[str, int, str, int]]:
        """This host's established TCP connections: (local address, local port, peer address, peer port)."""
        done = subprocess.run(["ip", "netns", "exec", self.ns, "ss", "-tnH", "state", "established"],
                              capture_output=True, text=True, timeout=IP_TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(f"ss in {self.ns}: {done.stderr.strip()}")
        connections = []
        for line in done.stdout.splitlines():
            # Recv-Q Send-Q Local:Port Peer:Port (one state asked for, so no State column)
            local, peer = line.split()[2:4]
            (local_address, local_port), (peer_address, peer_port) = local.rsplit(":", 1), peer.rsplit(":", 1)
            connections.append((local_address, int(local_port), peer_address, int(peer_port)))
        return connections

    def drop_connection(self, local_port: int) -> None:
        """Drop, without a word, every packet of this host's TCP connection from ``local_port``, both ways:
        a firewall or NAT that forgot the connection. Nothing else is touched; a new connection (another
        port) passes. ``allow_all()`` lifts it; ``dropped()`` counts what was dropped.

        Outgoing packets (source port ``local_port``) are dropped as they leave ``eth0``; incoming ones
        (to this address and port) as the bridge sends them down this host's link. Both with
        ``tc``: an ``htb`` root whose unclassified traffic goes out untouched, and a ``u32`` filter
        putting the connection's packets into a class whose queue holds nothing (``pfifo limit 0``):
        only the qdiscs and the filter every kernel has, no ``act_gact`` (``action drop``) or ``prio``.
        """
        self._filtered = True
        tcp = ["match", "ip", "protocol", "6", "0xff"]
        out = ["match", "ip", "src", f"{self.address}/32", "match", "ip", "sport", str(local_port), "0xffff"]
        into = ["match", "ip", "dst", f"{self.address}/32", "match", "ip", "dport", str(local_port), "0xffff"]
        _drop_matching(self.ns, self.dev, tcp + out)
        _drop_matching(self.network.bridge_ns, self.bridge_port, tcp + into)

    def dropped(self) -> tuple[int, int]:
        """Packets ``drop_connection`` dropped so far: (outgoing, incoming)."""
        return _dropped(self.ns, self.dev), _dropped(self.network.bridge_ns, self.bridge_port)

    def allow_all(self) -> None:
        """Lift ``drop_connection``: both links without filters again."""
        if not self._filtered:
            return
        errors = []
        for ns, dev in ((self.ns, self.dev), (self.network.bridge_ns, self.bridge_port)):
            done = _tc(ns, "qdisc", "del", "dev", dev, "root")
            if done.returncode != 0 and "handle of zero" not in done.stderr:  # "none there" is fine
                errors.append(f"tc qdisc del dev {dev} root in {ns}: {done.stderr.strip()}")
        if errors:
            raise RuntimeError("; ".join(errors))
        self._filtered = False

    def pids(self) -> list[int]:
        """Every process in this host's namespace."""
        return namespace_pids(self.ns)

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


def _tc(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, "tc", *args], capture_output=True, text=True, timeout=IP_TIMEOUT)


def _drop_matching(ns: str, dev: str, match: list[str]) -> None:
    """On ``dev`` in ``ns``, drop the outgoing IPv4 packets that ``match`` (u32 selectors); pass the rest."""
    steps = [
        ["qdisc", "add", "dev", dev, "root", "handle", "1:", "htb"],  # default 0: the rest goes out unshaped
        ["class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", "8bit", "quantum", "1514"],
        ["qdisc", "add", "dev", dev, "parent", "1:1", "handle", "2:", "pfifo", "limit", "0"],  # holds nothing
        ["filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32", *match, "flowid", "1:1"],
    ]
    for step in steps:
        done = _tc(ns, *step)
        if done.returncode != 0:
            raise RuntimeError(f"tc {' '.join(step)} in {ns}: {done.stderr.strip()}")


def _dropped(ns: str, dev: str) -> int:
    """Packets the empty queue of ``_drop_matching`` on ``dev`` dropped (0 without one)."""
    done = _tc(ns, "-s", "qdisc", "show", "dev", dev)
    match = re.search(r"^qdisc pfifo 2: .*\n.*\(dropped (\d+),", done.stdout, re.MULTILINE)
    return int(match.group(1)) if match else 0


class Network:
    """A bridge in a namespace of its own, and hosts wired to it. Also a context manager.

    Made after removing what killed runs left (``remove_stale_namespaces``, whose names are kept
    in ``stale_removed``). A stale namespace that cannot be removed (a process that outlives
    SIGKILL) raises: the machine needs a look.
    """

    def __init__(self) -> None:
        self.stale_removed = remove_stale_namespaces()
        self.tag = secrets.token_hex(3)
        self.prefix = namespace_name(self.tag, "")  # every namespace of this network starts so
        self.subnet = f"10.231.{random.randrange(256)}"
        self.bridge_ns = namespace_name(self.tag, "br")
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
        """A new host ``name`` (its host name too) with the next address on the subnet."""
        ns = namespace_name(self.tag, name)
        port = f"p-{name}"[:15]  # the bridge's end of the veth
        address = f"{self.subnet}.{10 + len(self.hosts)}"
        self._add_namespace(ns)
        ip("link", "add", Host.dev, "type", "veth", "peer", "name", port, "netns", self.bridge_ns, ns=ns)
        ip("link", "set", port, "master", "br0", "up", ns=self.bridge_ns)
        ip("addr", "add", f"{address}/24", "dev", Host.dev, ns=ns)
        ip("link", "set", Host.dev, "up", ns=ns)
        host = self.hosts[name] = Host(self, name, ns, address, port)
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
            host.command(argv), env=env, text=True,
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
