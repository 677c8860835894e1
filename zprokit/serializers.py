"""Payload serializers: cloudpickle (default) and JSON.

A serializer turns one Python object into a list of frames and back. The
pickle serializer uses protocol 5 with a buffer callback, so large buffers
that support it (NumPy arrays, ``pickle.PickleBuffer``) travel as their own
frames instead of being copied into the pickle.

Deserialization is only ever called on frames whose signature verified (see
``protocol.unpack``); a pickle runs code, and the key is what lets it run.
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Protocol, Sequence, SupportsIndex

import cloudpickle  # type: ignore[import-untyped]

__all__ = ["Serializer", "PickleSerializer", "JsonSerializer", "get_serializer"]


class Serializer(Protocol):
    name: str

    def dumps(self, obj: Any) -> list[Any]: ...

    def loads(self, frames: Sequence[Any]) -> Any: ...


_PLAIN = (bytes, str, int, float, bool, type(None))
OUT_OF_BAND_MIN = 64 * 1024  # bytes objects at least this large travel as their own frame


class _BytesOutOfBand:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        return bytes, (pickle.PickleBuffer(self.data),)


def _plain(obj: Any) -> bool:
    """Data that plain pickle writes exactly as cloudpickle would (no code inside)."""
    kind = type(obj)
    if kind in _PLAIN:
        return True
    if kind in (list, tuple) and len(obj) <= 32:
        return all(type(x) in _PLAIN for x in obj)
    if kind is dict and len(obj) <= 32:
        return all(type(k) in _PLAIN and type(v) in _PLAIN for k, v in obj.items())
    return False


class PickleSerializer:
    """cloudpickle, protocol 5, out-of-band buffers in their own frames.

    Small plain data (scalars, and short flat lists, tuples and dicts of
    them) goes through the standard pickle instead: the same bytes, without
    cloudpickle's per-call set-up, which costs more than the pickling itself.
    """

    name = "pickle"

    def dumps(self, obj: Any) -> list[Any]:
        if type(obj) is bytes and len(obj) >= OUT_OF_BAND_MIN:
            # bytes have no out-of-band form of their own: send the buffer as its own frame,
            # uncopied, and rebuild the bytes from it on arrival (one copy, as pyzmq's recv makes)
            buffers: list[pickle.PickleBuffer] = []
            data = pickle.dumps(_BytesOutOfBand(obj), protocol=5, buffer_callback=buffers.append)
            return [data, *(b.raw() for b in buffers)]
        if _plain(obj):
            return [pickle.dumps(obj, protocol=5)]
        buffers = []
        data = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        return [data, *(b.raw() for b in buffers)]

    def loads(self, frames: Sequence[Any]) -> Any:
        if not frames:
            raise ValueError("empty payload")
        return pickle.loads(frames[0], buffers=frames[1:])


class JsonSerializer:
    """JSON, for deployments that want no pickle on the wire at all."""

    name = "json"

    def dumps(self, obj: Any) -> list[Any]:
        return [json.dumps(obj, separators=(",", ":")).encode()]

    def loads(self, frames: Sequence[Any]) -> Any:
        if len(frames) != 1:
            raise ValueError("a JSON payload is one frame")
        return json.loads(bytes(frames[0]))


_BY_NAME: dict[str, Serializer] = {"pickle": PickleSerializer(), "json": JsonSerializer()}


def get_serializer(spec: "str | Serializer | None") -> Serializer:
    """``"pickle"`` (default), ``"json"``, or an object with ``name``, ``dumps`` and ``loads``."""
    if spec is None:
        return _BY_NAME["pickle"]
    if isinstance(spec, str):
        try:
            return _BY_NAME[spec]
        except KeyError:
            raise ValueError(f"unknown serializer {spec!r}; choose one of {sorted(_BY_NAME)}") from None
    for attr in ("name", "dumps", "loads"):
        if not hasattr(spec, attr):
            raise TypeError(f"a serializer needs a {attr!r} attribute")
    return spec
