"""Wire format: volume packing round trip and its checks, result patches, strict JSON, prompt validation,
API version refusal, and that the protocol/client/launcher import no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medvlsam2 import API_VERSION
from medvlsam2 import protocol as P
from medvlsam2.errors import Cancelled, InputError, UnknownObjectError
from medvlsam2.results import SegmentationResult

ENGINE = Path(__file__).resolve().parents[2] / "MedVLSAM2Slicer"


def _volume(dtype=np.int16, shape=(4, 6, 5)):
    rng = np.random.default_rng(1)
    return rng.integers(-100, 100, shape).astype(dtype), (0.7, 0.8, 2.5), (-10.0, 5.0, 3.0), np.eye(3)[[1, 0, 2]]


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_volume_round_trip_keeps_voxels_geometry_and_id(dtype):
    arr, sp, org, d = _volume(dtype)
    vid, body = P.pack_volume(arr, sp, org, d)
    vid2, out, geo = P.unpack_volume(body, max_voxels=10_000)
    assert vid == vid2 and out.dtype == arr.dtype and np.array_equal(out, arr)
    assert geo["spacing"] == list(sp) and geo["origin"] == list(org) and geo["direction"] == list(d.reshape(-1))
    # the id follows content and geometry
    assert P.volume_id(arr, sp, org, d) == vid
    assert P.volume_id(arr + 1, sp, org, d) != vid
    assert P.volume_id(arr, (1, 1, 1), org, d) != vid


def test_big_endian_input_is_sent_little_endian_with_the_same_id():
    arr, sp, org, d = _volume()
    vid, body = P.pack_volume(arr.astype(">i2"), sp, org, d)
    assert P.unpack_volume(body, 10_000)[0] == vid == P.volume_id(arr, sp, org, d)


def _body_with_header(**changes):
    arr, sp, org, d = _volume()
    _, body = P.pack_volume(arr, sp, org, d)
    n = int.from_bytes(body[8:12], "little")
    header = json.loads(body[12:12 + n])
    header.update(changes)
    raw = json.dumps(header).encode()
    return P.MAGIC + len(raw).to_bytes(4, "little") + raw + body[12 + n:]


@pytest.mark.parametrize("changes, words", [
    ({"dtype": "complex64"}, "not supported"),
    ({"dtype": "int32"}, "declares 240 bytes.*need 480"),  # byte count no longer matches
    ({"shape": [4, 6, -5]}, "positive"),
    ({"shape": [4, 6]}, "three integers"),
    ({"spacing": [1, 1]}, "spacing"),
    ({"id": "0" * 64}, "corrupted"),
])
def test_bad_uploads_are_refused_with_a_reason(changes, words):
    with pytest.raises(InputError, match=words):
        P.unpack_volume(_body_with_header(**changes), 10_000)


def test_garbage_and_voxel_limit():
    with pytest.raises(InputError, match="not a medvlsam2 volume"):
        P.unpack_volume(b"hello", 100)
    arr, sp, org, d = _volume()
    with pytest.raises(P.PayloadTooLarge, match="more than this server's limit"):
        P.unpack_volume(P.pack_volume(arr, sp, org, d)[1], max_voxels=10)
    with pytest.raises(InputError, match="not supported"):
        P.pack_volume(arr.astype(np.complex64), sp, org, d)


def test_result_patch_round_trip():
    patch = (np.arange(2 * 3 * 4).reshape(2, 3, 4) % 3 == 0).astype(np.uint8)
    r = SegmentationResult(3, "liver", (1, 3, 0, 3, 2, 6), patch, {1: 0.5, 2: -1.0})
    back = P.decode_result(json.loads(json.dumps(P.encode_result(r))))
    assert (back.object_id, back.name, back.bbox, back.scores) == (3, "liver", (1, 3, 0, 3, 2, 6), {1: 0.5, 2: -1.0})
    assert np.array_equal(back.patch, patch)
    empty = P.decode_result(P.encode_result(SegmentationResult(1, "a", None, np.zeros((0, 0, 0), np.uint8))))
    assert empty.bbox is None and empty.patch.shape == (0, 0, 0)
    m = np.zeros((3, 4, 5), np.uint8)
    m[1, 2, 3] = 1
    assert np.array_equal(P.decode_mask(P.encode_mask(m), m.shape), m)


def test_strict_json_and_prompt_validation():
    with pytest.raises(InputError, match="finite"):
        P.parse_json(b'{"points": [[NaN, 1, 2]]}')
    with pytest.raises(InputError, match="not valid JSON"):
        P.parse_json(b"{points")
    assert P.validate_points({"points": [[1, 2, 3]], "labels": [-1]}) == ([[1.0, 2.0, 3.0]], [-1])
    for bad in ({"points": [[1, 2]], "labels": [1]}, {"points": [[1, 2, 3]], "labels": [0]},
                {"points": [], "labels": []}, {"points": [[1, "a", 3]], "labels": [1]}, [1, 2]):
        with pytest.raises(InputError):
            P.validate_points(bad)
    assert P.validate_box({"box": [1, 2, 3, 4], "k": 2}) == ([1.0, 2.0, 3.0, 4.0], 2)
    with pytest.raises(InputError, match="slice index k"):
        P.validate_box({"box": [1, 2, 3, 4]})
    with pytest.raises(InputError, match="non-negative"):
        P.validate_box({"box": [1, 2, 3, 4], "k": -1})
    assert P.validate_propagate({"k_range": [1, 3], "direction": "forward"}) == ((1, 3), "forward")
    with pytest.raises(InputError, match="direction"):
        P.validate_propagate({"direction": "sideways"})
    with pytest.raises(InputError, match="context"):
        P.validate_context({"object": "x"})


def test_error_bodies_map_to_engine_exceptions():
    for code, cls in (("cancelled", Cancelled), ("unknown_object", UnknownObjectError), ("bad_input", InputError),
                      ("unknown_session", P.SessionExpired), ("internal", P.RemoteError)):
        with pytest.raises(cls):
            P.raise_for_error(P.error_body(code, "msg"), 400)
    P.raise_for_error({"ok": 1}, 200)  # no error: no exception


def test_api_version_refusal_names_the_side_to_update():
    P.check_api_version(API_VERSION)
    with pytest.raises(P.APIVersionMismatch, match="update the client"):
        P.check_api_version(API_VERSION + 1)
    with pytest.raises(P.APIVersionMismatch, match="update the server"):
        P.check_api_version(API_VERSION - 1)


def test_torch_free_imports():
    code = ("import sys; import medvlsam2.protocol, medvlsam2.client, medvlsam2.server.launcher, medvlsam2.errors, "
            "medvlsam2.utils.cancel; assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ENGINE)


def test_decompression_stops_at_the_declared_size():
    import zstandard

    arr, sp, org, d = _volume()
    _, body = P.pack_volume(arr, sp, org, d)
    n = int.from_bytes(body[8:12], "little")
    head = body[:12 + n]
    obj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    bomb = obj.compress(bytes(256 << 20)) + obj.flush()  # 256 MiB of zeros in ~8 KB, size not declared
    with pytest.raises(InputError, match=f"more than {arr.nbytes}"):
        P.unpack_volume(head + bomb, 10_000)
    declared = (0xFD2FB528).to_bytes(4, "little") + bytes([0xE0]) + (1 << 40).to_bytes(8, "little") + b"\x01\x00\x00"
    with pytest.raises(InputError, match="declares 1099511627776 bytes"):
        P.unpack_volume(head + declared, 10_000)
    out = np.empty(4, np.uint8)
    assert P.decompress_exact(zstandard.ZstdCompressor().compress(b"abcd"), out).tobytes() == b"abcd"


@pytest.mark.parametrize("direction, words", [
    (np.diag([2.0, 2.0, 2.0]), "unit vectors"),
    (np.array([[1, 0.5, 0], [0, 1, 0], [0, 0, 1.0]]), "orthonormal"),
    (np.zeros((3, 3)), "orthonormal"),
])
def test_direction_must_be_orthonormal(direction, words):
    arr, sp, org, _ = _volume()
    with pytest.raises(InputError, match=words):
        P.unpack_volume(P.pack_volume(arr, sp, org, direction)[1], 10_000)
    rotated = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])  # a rotation and a reflection are fine
    assert P.unpack_volume(P.pack_volume(arr, sp, org, rotated)[1], 10_000)[2]["direction"] == list(rotated.ravel())
    assert P.unpack_volume(P.pack_volume(arr, sp, org, np.diag([1.0, -1, 1]))[1], 10_000)


def test_strict_json_refuses_surrogates_huge_numbers_long_lists_and_bools_as_ints():
    for raw, words in ((b'{"prompt": "\\ud800"}', "surrogate"), (b'{"k": ' + b"9" * 300 + b"}", "2\\^53"),
                       (b"[" + b"1," * 2000 + b"1]", "entries"), (b"[" * 20000 + b"]" * 20000, "nested")):
        with pytest.raises(InputError, match=words):
            P.parse_json(raw)
    assert P.parse_json('{"prompt": "\\ud83d\\ude00 liver"}'.encode()) == {"prompt": "\U0001F600 liver"}  # a valid pair
    with pytest.raises(InputError, match="outside the volume"):
        P.validate_box({"box": [1, 1, 1e308, 5, 5, 2]})
    with pytest.raises(InputError, match="context"):
        P.validate_context({"object": True})
    with pytest.raises(InputError, match="labels"):
        P.validate_points({"points": [[1, 2, 3]], "labels": [True]})
    with pytest.raises(InputError, match="limit of 2"):
        P.validate_points({"points": [[1, 2, 3]] * 3, "labels": [1] * 3}, max_points=2)
    assert P.validate_timeout({"timeout_s": 2}, 10.0) == 2.0 and P.validate_timeout({}, 10.0) == 10.0
    with pytest.raises(InputError, match="timeout_s"):
        P.validate_timeout({"timeout_s": 11}, 10.0)
    assert len(P.excerpt("x" * 10_000)) <= 60 and len(P.excerpt(list(range(10_000)))) <= 60


def test_capacity_errors_carry_the_retry_hint():
    with pytest.raises(P.ServerBusy) as info:
        P.raise_for_error(P.error_body("too_many_sessions", "full"), 503, 7.0)
    assert info.value.retry_after_s == 7.0 and info.value.status == 503
