"""Payload serializers: what travels in-band, what out-of-band, and name lookup."""

from __future__ import annotations

import pickle

import pytest

from zprokit.protocol import Kind, Signer, pack, unpack
from zprokit.serializers import JsonSerializer, PickleSerializer, get_serializer

pytestmark = pytest.mark.timeout(10)

PICKLE = PickleSerializer()
JSON = JsonSerializer()


def wire(frames):
    """As a receiver gets them: fresh bytes objects, nothing shared with the sender."""
    return [bytes(f) for f in frames]


def test_pickle_carries_lambdas_and_closures():
    double = lambda x: x * 2  # noqa: E731
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(double)  # plain pickle cannot; cloudpickle must

    def make_adder(n):
        return lambda x: x + n

    assert PICKLE.loads(wire(PICKLE.dumps(double)))(21) == 42
    assert PICKLE.loads(wire(PICKLE.dumps(make_adder(3))))(4) == 7
    assert PICKLE.loads(wire(PICKLE.dumps({"k": [1, "ü", None]}))) == {"k": [1, "ü", None]}


def test_pickle_refuses_an_empty_payload():
    with pytest.raises(ValueError):
        PICKLE.loads([])


def test_numpy_arrays_travel_out_of_band_without_copies():
    np = pytest.importorskip("numpy", reason="numpy is needed for the out-of-band array test")
    arr = np.arange(1_000_000, dtype=np.float64)
    frames = PICKLE.dumps(arr)
    assert len(frames) == 2
    assert len(frames[0]) < 1000  # the pickle holds only the metadata
    assert memoryview(frames[1]).nbytes == arr.nbytes
    assert np.shares_memory(np.frombuffer(frames[1], dtype=arr.dtype), arr)
    back = PICKLE.loads(wire(frames))
    assert back.dtype == arr.dtype and np.array_equal(back, arr)
    # The receiver builds its array on the frame it got, not on a copy.
    received = [frames[0], bytearray(frames[1])]
    assert np.shares_memory(PICKLE.loads(received), np.frombuffer(received[1], dtype=arr.dtype))


def test_numpy_layouts_and_several_arrays():
    np = pytest.importorskip("numpy", reason="numpy is needed for the out-of-band array test")
    fortran = np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4))
    strided = np.arange(20)[::3]  # not contiguous: goes in-band
    frames = PICKLE.dumps({"f": fortran, "s": strided, "z": np.zeros(0)})
    back = PICKLE.loads(wire(frames))
    assert back["f"].flags.f_contiguous and np.array_equal(back["f"], fortran)
    assert np.array_equal(back["s"], strided) and back["z"].shape == (0,)
    assert len(frames) == 3  # the Fortran array and the empty one out-of-band


def test_pickle_buffer_travels_out_of_band():
    data = bytearray(b"x" * 100_000)
    frames = PICKLE.dumps(pickle.PickleBuffer(data))
    assert len(frames) == 2 and len(frames[0]) < 100
    data[0] = ord("y")  # the frame is a view of the sender's buffer, not a copy
    assert bytes(frames[1][:1]) == b"y"
    assert bytes(PICKLE.loads(wire(frames))) == bytes(data)
    assert PICKLE.loads(wire(PICKLE.dumps(bytearray(b"ab")))) == bytearray(b"ab")  # plain: in-band


def test_signed_payload_survives_the_protocol():
    np = pytest.importorskip("numpy", reason="numpy is needed for the out-of-band array test")
    signer = Signer(b"key")
    arr = np.arange(1000, dtype=np.uint16)
    msg = unpack(signer, wire(pack(signer, Kind.REQUEST, payload=PICKLE.dumps(arr))))
    assert np.array_equal(PICKLE.loads(msg.payload), arr)


def test_json_round_trip_and_frame_count():
    obj = {"name": "fenêtre", "values": [1, 2.5, None, True], "nested": {"a": []}}
    frames = JSON.dumps(obj)
    assert len(frames) == 1 and isinstance(frames[0], bytes)
    assert JSON.loads(wire(frames)) == obj
    for bad in ([], [b"1", b"2"]):
        with pytest.raises(ValueError):
            JSON.loads(bad)
    with pytest.raises(TypeError):
        JSON.dumps({1, 2})


def test_get_serializer_by_name_and_custom():
    assert isinstance(get_serializer(None), PickleSerializer)
    assert get_serializer("pickle").name == "pickle"
    assert isinstance(get_serializer("json"), JsonSerializer)
    with pytest.raises(ValueError, match="unknown serializer 'yaml'"):
        get_serializer("yaml")

    class Custom:
        name = "custom"

        def dumps(self, obj):
            return [repr(obj).encode()]

        def loads(self, frames):
            return bytes(frames[0]).decode()

    custom = Custom()
    assert get_serializer(custom) is custom
    del Custom.loads
    with pytest.raises(TypeError, match="loads"):
        get_serializer(custom)
