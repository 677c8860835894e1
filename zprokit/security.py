"""Keys: where the shared key comes from, and when a random one is allowed."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket

__all__ = ["resolve_key", "is_local_endpoint", "generate_key", "ENV_KEY"]

ENV_KEY = "ZPROKIT_KEY"
# create_window hands a binary key to its child hex-encoded, so any bytes survive the environment.
ENV_KEY_HEX = "ZPROKIT_KEY_HEX"


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


def env_key() -> bytes | None:
    """The key from the environment: ``ZPROKIT_KEY`` (text) or ``ZPROKIT_KEY_HEX``."""
    hex_key = os.environ.get(ENV_KEY_HEX)
    if hex_key:
        try:
            return bytes.fromhex(hex_key)
        except ValueError:
            raise ValueError(f"{ENV_KEY_HEX} is not hexadecimal") from None
    text = os.environ.get(ENV_KEY)
    return text.encode() if text else None


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


def resolve_key(key: bytes | str | None, *, endpoint: str | None = None, role: str = "main") -> bytes:
    """The key in force: argument first, then environment, then (main on a local endpoint only) random.

    Raises ``ValueError`` when no key is given and a random one is not allowed:
    a main bound beyond loopback, or any window (it must share the main's key).
    """
    if key is not None:
        return _as_bytes(key)
    found = env_key()
    if found:
        return found
    if role == "main" and endpoint is not None and is_local_endpoint(endpoint):
        return generate_key()
    if role == "main":
        raise ValueError(
            f"refusing to bind {endpoint} beyond loopback without a key: anyone who can reach it "
            f"could run code here. Pass key=..., or set {ENV_KEY} (make one with `zprokit keygen`)."
        )
    raise ValueError(
        f"a window needs the main's key: pass key=..., or set {ENV_KEY} "
        "(windows made with create_window get it automatically)"
    )
