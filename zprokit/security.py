"""Keys, CURVE and ZAP: where the shared key comes from, and who may connect.

The shared key signs every message (``protocol.Signer``); whoever holds it can
make a peer unpickle what they send, so it is a capability, kept off command
lines and out of files that other users can read. Its sources, in order:
``key=``, ``key_file=``, ``ZPROKIT_KEY`` (or ``ZPROKIT_KEY_HEX``, how
``create_window`` hands it on), ``ZPROKIT_KEY_FILE``; then, with CURVE, a key
derived from the main's public CURVE key; then, for a main on a loopback or
ipc endpoint only, a random one.

CURVE (optional): the main's ROUTER and XPUB are CURVE servers, and a ZAP
handler (pyzmq's ``zmq.auth.Authenticator``, served from the main's own I/O
thread) admits only the public keys on the allow-list. Its answer names the
window the key is listed for; that name comes back on every message as the
``User-Id`` property, and the main compares it with the name the message
claims. With CURVE and no shared key given, the shared (MAC) key is derived from the
main's public key: it is then no secret, and CURVE (encryption, and the
allow-list) is what keeps strangers out. See SECURITY.md.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import ipaddress
import logging
import os
import secrets
import socket
import stat
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, cast

import zmq
from zmq.auth.base import Authenticator
from zmq.utils import z85

from . import _env
from .protocol import check_window_name


__all__ = [
    "ENV_KEY",
    "ENV_KEY_FILE",
    "ENV_CURVE_SECRET",
    "ENV_CURVE_SERVER",
    "resolve_key",
    "read_key_file",
    "is_local_endpoint",
    "generate_key",
    "curve_key",
    "read_curve_allow_file",
    "CurveServer",
    "CurveClient",
    "ZapHandler",
    "REJECTION_REASONS",
]

log = logging.getLogger(__name__)

# The environment's names for keys (all of zprokit's variables are in zprokit._env).
ENV_KEY = _env.KEY
ENV_KEY_FILE = _env.KEY_FILE
ENV_KEY_HEX = _env.KEY_HEX  # create_window's: hex, so any bytes survive the environment
ENV_CURVE_SECRET = _env.CURVE_SECRET
ENV_CURVE_SERVER = _env.CURVE_SERVER

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
# Without CURVE, the main's PUB port is a PLAIN server in this ZAP domain: only a window that
# completed its handshake knows its password (subscriber_token), so strangers cannot subscribe.
PUB_DOMAIN = "zprokit-pub"
# Reasons for dropping a message that are always in stats()["rejected"], zero or not: each one
# is a sign of an attack or a misconfigured peer, so each is logged as a warning (rate-limited).
REJECTION_REASONS = ("bad_signature", "replay", "malformed", "oversized", "unknown_version", "unauthenticated")
_DERIVED_KEY_LABEL = b"zprokit/hmac-key-from-curve-server-key/v1\0"


# --- the shared key ------------------------------------------------------------------------


def generate_key() -> bytes:
    """A new random key, as text-safe bytes (64 hex digits), fit for ``ZPROKIT_KEY``."""
    return secrets.token_hex(32).encode()


def _as_bytes(key: bytes | str) -> bytes:
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"key must be bytes or str, not {type(key).__name__}")
    if not key:
        raise ValueError("the key is empty")
    return bytes(key)


def read_secret(path: str | os.PathLike[str], what: str = "key file") -> bytes:
    """The contents of ``path``, stripped; ``ValueError`` if other users may read it, or it is empty.

    A secret that group or others can read (or write) is refused, as ssh does,
    rather than used with a warning: the key lets its holder run code in every
    peer. ``OSError`` (a missing file, no permission) is raised as it is.
    """
    with open(path, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & 0o077:
            raise ValueError(
                f"{what} {os.fspath(path)} has mode {stat.S_IMODE(mode):04o}, so other users can read or "
                f"change it; run `chmod 600 {os.fspath(path)}` (the key lets its holder run code in every peer)"
            )
        data = f.read().strip()
    if not data:
        raise ValueError(f"{what} {os.fspath(path)} is empty")
    return data


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """The shared key in ``path`` (``zprokit keygen -o`` writes one); see ``read_secret``."""
    return read_secret(path, "key file")


def env_key() -> bytes | None:
    """The key from the environment: ``ZPROKIT_KEY_HEX``, ``ZPROKIT_KEY``, then ``ZPROKIT_KEY_FILE``."""
    hex_key = os.environ.get(ENV_KEY_HEX)
    if hex_key:
        try:
            return bytes.fromhex(hex_key)
        except ValueError:
            raise ValueError(f"{ENV_KEY_HEX} is not hexadecimal") from None
    text = os.environ.get(ENV_KEY)
    if text:
        return text.encode()
    path = os.environ.get(ENV_KEY_FILE)
    if path:
        try:
            return read_key_file(path)
        except OSError as e:
            raise ValueError(f"{ENV_KEY_FILE}: cannot read {path}: {e.strerror}") from None
    return None


def derive_key_from_curve(server_public_key: bytes | str) -> bytes:
    """The shared (MAC) key both sides use under CURVE when no shared key is given.

    Derived from the main's *public* key, so it is no secret: with it, what
    keeps strangers out is CURVE alone (the allow-list, and encryption).
    """
    return hashlib.sha256(_DERIVED_KEY_LABEL + curve_key(server_public_key, "the CURVE server key")).hexdigest().encode()


def is_local_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// endpoints bound to a loopback address."""
    transport, _, address = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # an interface name or a host name: resolve it to decide
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def resolve_key(
    key: bytes | str | None,
    *,
    key_file: str | os.PathLike[str] | None = None,
    endpoint: str | None = None,
    role: str = "main",
    curve_server_key: bytes | str | None = None,
) -> bytes:
    """The key in force: ``key``, ``key_file``, the environment, CURVE's derived key, then random.

    ``curve_server_key`` is the main's public CURVE key when CURVE is on. A
    random key is made only for a main on a local endpoint. Raises
    ``ValueError`` when there is no key and a random one is not allowed (a
    main bound beyond loopback, or any window), or a key file is readable by
    others; ``OSError`` when ``key_file`` cannot be read.
    """
    if key is not None:
        return _warn_if_weak(_as_bytes(key), "key=")
    if key_file is not None:
        return _warn_if_weak(read_key_file(key_file), f"the key file {key_file}")
    found = env_key()
    if found:
        return _warn_if_weak(found, "the environment")
    if curve_server_key is not None:
        return derive_key_from_curve(curve_server_key)
    if role == "main" and endpoint is not None and is_local_endpoint(endpoint):
        return generate_key()
    if role == "main":
        raise ValueError(
            f"refusing to bind {endpoint} beyond loopback without a key: anyone who can reach it could "
            f"run code here. Make a key with `zprokit keygen -o FILE` and pass key_file=FILE (or key=..., "
            f"or set {ENV_KEY_FILE} or {ENV_KEY}) to the main and its windows; or turn on CURVE "
            "(curve_secret_key=... and curve_allow={name: public key}; see SECURITY.md)."
        )
    raise ValueError(
        f"a window needs the main's key: pass key=... or key_file=..., or set {ENV_KEY} or {ENV_KEY_FILE} "
        "(windows made with create_window get it automatically)"
    )


MIN_KEY_BYTES = 16  # 128 bits, if every byte were random


def _warn_if_weak(key: bytes, source: str) -> bytes:
    """Warn (not refuse: the owner may know better) about a key that is short or plainly guessable.

    Whoever guesses the key can make every peer unpickle what they send. A key made by
    ``zprokit keygen`` (32 random bytes, hex) passes; "secret", or one byte repeated, does not.
    """
    distinct = len(set(key))
    if len(key) < MIN_KEY_BYTES or distinct < 8:
        log.warning(
            "the key from %s is weak (%d bytes, %d distinct): whoever guesses it can run code in every "
            "peer; make one with `zprokit keygen -o FILE` (or zprokit.generate_key())", source, len(key), distinct)
    return key


# --- CURVE -----------------------------------------------------------------------------------


def curve_key(value: bytes | str, what: str = "CURVE key") -> bytes:
    """``value`` as a z85 CURVE key (40 bytes); it may be given as z85 text or 32 raw bytes."""
    if isinstance(value, str):
        try:
            value = value.strip().encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"{what} is not z85 text") from None
    if not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")
    value = bytes(value)
    if len(value) == 32:
        return z85.encode(value)
    if len(value) == 40:
        try:
            if len(z85.decode(value)) == 32:
                return value
        except (ValueError, KeyError, IndexError, TypeError):
            pass
    raise ValueError(f"{what} must be 40 z85 characters (`zprokit keygen --curve` makes them) or 32 raw bytes")


def _public_of(secret: bytes, public: bytes | str | None, what: str) -> bytes:
    derived = zmq.curve_public(secret)
    if public is not None and curve_key(public, f"{what} public key") != derived:
        raise ValueError(f"{what} public key does not belong to its secret key")
    return derived


@dataclass(frozen=True)
class CurveServer:
    """A main's CURVE keys and allow-list (z85 public key -> the one window name it may use)."""

    secret_key: bytes
    public_key: bytes
    names: dict[bytes, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls, secret_key: bytes | str, public_key: bytes | str | None, allow: Mapping[str, bytes | str] | None
    ) -> "CurveServer":
        """Validate the keys; ``allow`` maps each window name to its public key. Raises ``ValueError``."""
        if not zmq.has("curve"):
            raise ValueError("this libzmq was built without CURVE support")
        secret = curve_key(secret_key, "curve_secret_key")
        names: dict[bytes, str] = {}
        for name, key in (allow or {}).items():
            problem = check_window_name(name)
            if problem:
                raise ValueError(f"curve_allow: {problem}: {name!r}")
            z = curve_key(key, f"curve_allow[{name!r}]")
            if z in names and names[z] != name:
                raise ValueError(f"curve_allow lists one public key for both {names[z]!r} and {name!r}")
            names[z] = name
        return cls(secret, _public_of(secret, public_key, "curve_secret_key's"), names)

    def apply(self, sock: zmq.Socket[Any]) -> None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)


@dataclass(frozen=True)
class CurveClient:
    """A window's CURVE keys and the main's public key."""

    secret_key: bytes
    public_key: bytes
    server_key: bytes

    @classmethod
    def create(
        cls, secret_key: bytes | str | None, public_key: bytes | str | None, server_key: bytes | str | None
    ) -> "CurveClient | None":
        """The keys given, else those of ``ZPROKIT_CURVE_SECRET_KEY`` and ``..._SERVER_KEY``; None without CURVE."""
        if secret_key is None and server_key is None and public_key is None:
            secret_key = os.environ.get(ENV_CURVE_SECRET) or None
            server_key = os.environ.get(ENV_CURVE_SERVER) or None
            if secret_key is None and server_key is None:
                return None
        if secret_key is None or server_key is None:
            raise ValueError("CURVE needs both curve_secret_key (this window's) and curve_server_key (the main's public key)")
        if not zmq.has("curve"):
            raise ValueError("this libzmq was built without CURVE support")
        secret = curve_key(secret_key, "curve_secret_key")
        public = _public_of(secret, public_key, "curve_secret_key's")
        return cls(secret, public, curve_key(server_key, "curve_server_key"))

    def apply(self, sock: zmq.Socket[Any]) -> None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)


def read_curve_allow_file(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """An allow-list file: one ``name public-key`` per line; blank lines and ``#`` comments skipped.

    Raises ``ValueError`` naming the line that is wrong, ``OSError`` if unreadable.
    """
    allow: dict[str, bytes] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2:
                raise ValueError(f"{os.fspath(path)}:{number}: expected 'name public-key'")
            name, key = parts
            if name in allow:
                raise ValueError(f"{os.fspath(path)}:{number}: {name!r} is listed twice")
            try:
                allow[name] = curve_key(key, "public key")
            except ValueError as e:
                raise ValueError(f"{os.fspath(path)}:{number}: {e}") from None
    return allow


def subscriber_token(key: bytes, name: str, nonce: str) -> str:
    """The PLAIN password a window's SUB presents to the main's PUB port: a MAC of the name and
    its handshake's nonce under the shared key, so only the window that got the nonce, and holds
    the key, can subscribe (PLAIN travels in clear: a sniffer could replay it while the window
    is registered; CURVE closes that too)."""
    return hmac.new(key, f"zprokit SUB {name}\0{nonce}".encode(), hashlib.sha256).hexdigest()


class ZapHandler(Authenticator):
    """The ZAP handler of a main's context: CURVE keys on the allow-list only, User-Id = window name.

    It is pyzmq's ``Authenticator`` with a credentials callback and
    ``curve_user_id`` that map a key to its window name; the main serves its
    socket from its own I/O thread (``on_readable``), so there is no extra
    thread to start and stop, and the allow-list is read on the thread that
    owns it. ``on_denied(z85_key)`` is called for each key refused.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        names: Mapping[bytes, str],
        on_denied: Callable[[bytes], None],
        on_subscriber_denied: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(context, log=logging.getLogger(__name__ + ".zap"))
        self._names = dict(names)
        self._on_denied = on_denied
        self._on_subscriber_denied = on_subscriber_denied
        self._subscribers: dict[str, str] = {}  # window name -> its SUB's PLAIN password
        self.configure_curve_callback("*", self)

    def allow_subscriber(self, name: str, token: str) -> None:
        """Let window ``name``'s SUB in with ``token`` (its handshake's); I/O thread only."""
        self._subscribers[name] = token

    def forget_subscriber(self, name: str, token: str) -> None:
        """Stop admitting ``name``'s SUB with ``token`` (a newer handshake's stays)."""
        if self._subscribers.get(name) == token:
            del self._subscribers[name]

    def _authenticate_plain(self, domain: str, username: str, password: str) -> tuple[bool, bytes]:
        # Our own check, in constant time (pyzmq's compares with ==, and logs the password).
        token = self._subscribers.get(username) if domain == PUB_DOMAIN else None
        if token is not None and hmac.compare_digest(token.encode(), password.encode()):
            return True, b""
        if self._on_subscriber_denied is not None:
            self._on_subscriber_denied(username)
        return False, b"not a registered window"

    def start(self) -> None:
        """Bind the context's ZAP endpoint; ``ValueError`` if another handler has it already."""
        try:
            super().start()
        except zmq.ZMQError as e:
            if self.zap_socket is not None:
                self.zap_socket.close(0)
                self.zap_socket = None  # type: ignore[assignment]
            raise ValueError(
                f"cannot serve ZAP on {ZAP_ENDPOINT} ({e}): this zmq.Context has a ZAP handler already; "
                "give the main a context of its own"
            ) from None

    def allow_key(self, name: str, public_key: bytes | str) -> None:
        """Let ``public_key`` in as window ``name`` (create_window's keys for its children)."""
        self._names[curve_key(public_key)] = name

    def forget_key(self, public_key: bytes | str) -> None:
        """No longer let ``public_key`` in (a child that was never started)."""
        self._names.pop(curve_key(public_key), None)

    # the credentials provider of configure_curve_callback
    def callback(self, domain: str, key: bytes) -> bool:
        if key in self._names:
            return True
        self._on_denied(key)
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self._names[z85.encode(client_public_key)]

    def on_readable(self) -> None:
        """Answer every waiting ZAP request. I/O thread only."""
        while self.zap_socket is not None:
            try:
                request = self.zap_socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            _run_now(self.handle_zap_message(request))


def _run_now(result: Any) -> None:
    """Finish ``handle_zap_message`` (a coroutine in recent pyzmq) at once: our callback never waits."""
    if not inspect.iscoroutine(result):
        return
    try:
        result.send(None)
    except StopIteration:
        return
    result.close()
    raise RuntimeError("the ZAP handler tried to wait")


def user_id(frame: zmq.Frame) -> str | None:
    """The ZAP User-Id a received message came with, or None (no ZAP handler answered for it)."""
    try:
        return cast(str, frame.get("User-Id"))
    except zmq.ZMQError:
        return None
