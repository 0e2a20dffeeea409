"""Wire format shared by the inference server and the client. Torch-free: numpy, json, zstandard only.

- Every route lives under ``/v1`` and needs ``Authorization: Bearer <token>``.
- A volume travels once, as ``MAGIC | uint32 header length | header JSON | zstd(raw C-order voxels)``;
  the header holds dtype, shape and geometry; its id is a SHA-256 over the raw voxels and the geometry,
  so a client that reconnects asks ``GET /v1/volumes/{id}`` before uploading again.
- Prompts are small JSON in voxel coordinates (i, j, k); mask changes come back as the changed
  bounding box plus a zstd-compressed, base64 patch.
- Long calls (propagate, text segmentation, ask, report) answer with JSON lines: ``{"progress": [d, n]}``,
  ``{"token": "..."}``, then ``{"result": ...}`` / ``{"results": [...]}`` / ``{"done": true}`` or ``{"error": ...}``.
- Every error is ``{"error": {"code": ..., "message": ...}}`` with a message that says what to fix.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from typing import Any

import numpy as np

from . import API_VERSION, __version__
from .errors import Cancelled, CapabilityError, InputError, MedVLSAM2Error, UnknownObjectError
from .results import SegmentationResult

PREFIX = "/v1"
ROUTES = {
    "health": "/v1/health",
    "version": "/v1/version",
    "volume": "/v1/volumes/{volume_id}",
    "volumes": "/v1/volumes",
    "sessions": "/v1/sessions",
    "session": "/v1/sessions/{sid}",
    "heartbeat": "/v1/sessions/{sid}/heartbeat",
    "objects": "/v1/sessions/{sid}/objects",
    "object": "/v1/sessions/{sid}/objects/{obj}",
    "points": "/v1/sessions/{sid}/objects/{obj}/points",
    "box": "/v1/sessions/{sid}/objects/{obj}/box",
    "propagate": "/v1/sessions/{sid}/objects/{obj}/propagate",
    "undo": "/v1/sessions/{sid}/objects/{obj}/undo",
    "reset": "/v1/sessions/{sid}/objects/{obj}/reset",
    "mask": "/v1/sessions/{sid}/objects/{obj}/mask",
    "text": "/v1/sessions/{sid}/text",
    "ask": "/v1/sessions/{sid}/ask",
    "report": "/v1/sessions/{sid}/report",
    "cancel": "/v1/sessions/{sid}/cancel",
}
MAGIC = b"MVS2VOL1"
ALLOWED_DTYPES = ("uint8", "int8", "uint16", "int16", "int32", "float32", "float64")
JSONL = "application/x-ndjson"
VOLUME_MEDIA_TYPE = "application/x-medvlsam2-volume"


# ----- errors ---------------------------------------------------------------------------------------
class RemoteError(MedVLSAM2Error):
    """The server refused or failed a request; ``code`` and the message come from the server."""

    def __init__(self, message: str, code: str = "error", status: int = 0) -> None:
        super().__init__(message)
        self.code, self.status = code, status


class SessionExpired(RemoteError):
    """The server no longer knows this session (lease expired or server restarted)."""


class ServerUnavailable(RemoteError):
    """The server could not be reached or stopped answering mid-call."""


class APIVersionMismatch(RemoteError):
    """Client and server speak different protocol versions."""


class PayloadTooLarge(InputError):
    code = "too_large"


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def raise_for_error(body: dict[str, Any], status: int) -> None:
    """Turn an error body into the matching exception (engine errors keep their own classes)."""
    err = body.get("error") if isinstance(body, dict) else None
    if not err:
        return
    code, message = str(err.get("code", "error")), str(err.get("message", "server error"))
    if code == "cancelled":
        raise Cancelled(message)
    if code == "unknown_object":
        raise UnknownObjectError(message)
    if code == "unknown_session":
        raise SessionExpired(message, code, status)
    if code == CapabilityError.code:
        raise CapabilityError(message)
    if code in ("bad_input", "too_large", "bad_request"):
        raise InputError(message)
    raise RemoteError(f"server error ({code}): {message}", code, status)


def check_api_version(server_api: int, server_version: str = "?") -> None:
    """Refuse a server that speaks another protocol, saying which side to update."""
    if int(server_api) == API_VERSION:
        return
    side = "the client (update the MedVLSAM2Slicer extension / medvlsam2 package here)" if server_api > API_VERSION \
        else "the server (update medvlsam2 where the server runs)"
    raise APIVersionMismatch(f"server speaks API v{server_api} (medvlsam2 {server_version}), this client speaks "
                             f"API v{API_VERSION} (medvlsam2 {__version__}); update {side}", "api_version")


# ----- JSON -------------------------------------------------------------------------------------
def _reject_constant(name: str) -> float:
    raise InputError(f"JSON numbers must be finite; got {name}. Send real coordinates")


def parse_json(raw: bytes) -> Any:
    """Strict JSON: NaN/Infinity are refused with a clear message."""
    try:
        return json.loads(raw.decode("utf-8") if raw else "null", parse_constant=_reject_constant)
    except InputError:
        raise
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"the request body is not valid JSON ({exc}); send a JSON object") from None


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()


def _finite_numbers(values: Any, what: str, length: int | None = None) -> list[float]:
    if not isinstance(values, (list, tuple)) or (length is not None and len(values) != length):
        n = f"{length} " if length is not None else ""
        raise InputError(f"{what} must be a list of {n}numbers, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"{what} must hold finite numbers, got {v!r}")
        out.append(float(v))
    return out


def validate_points(body: Any) -> tuple[list[list[float]], list[int]]:
    """``{"points": [[i, j, k], ...], "labels": [1 | -1, ...]}``."""
    if not isinstance(body, dict) or "points" not in body or "labels" not in body:
        raise InputError('send {"points": [[i, j, k], ...], "labels": [1 or -1, ...]}')
    points = body["points"]
    if not isinstance(points, list) or not points:
        raise InputError("points must be a non-empty list of [i, j, k] voxel coordinates")
    pts = [_finite_numbers(p, "each point", 3) for p in points]
    labels = body["labels"]
    if not isinstance(labels, list) or len(labels) != len(pts) or any(v not in (1, -1) or isinstance(v, bool) for v in labels):
        raise InputError(f"labels must hold one +1 (include) or -1 (exclude) per point ({len(pts)} points)")
    return pts, [int(v) for v in labels]


def validate_box(body: Any) -> tuple[list[float], int | None]:
    """``{"box": [i0, j0, i1, j1], "k": k}`` or ``{"box": [i0, j0, k0, i1, j1, k1]}``."""
    if not isinstance(body, dict) or "box" not in body:
        raise InputError('send {"box": [i0, j0, i1, j1], "k": slice} or {"box": [i0, j0, k0, i1, j1, k1]}')
    box = body["box"]
    if not isinstance(box, list) or len(box) not in (4, 6):
        raise InputError("box must have 4 numbers (with k) or 6 numbers (3D box)")
    box = _finite_numbers(box, "box")
    k = body.get("k")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
        raise InputError(f"k must be a non-negative slice index, got {k!r}")
    if len(box) == 4 and k is None:
        raise InputError("a 2D box needs its slice index k")
    return box, k


def validate_propagate(body: Any) -> tuple[tuple[int, int] | None, str]:
    body = body or {}
    if not isinstance(body, dict):
        raise InputError('send {"k_range": [k0, k1] or null, "direction": "both"|"forward"|"backward"}')
    k_range = body.get("k_range")
    if k_range is not None:
        if not isinstance(k_range, list) or len(k_range) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in k_range):
            raise InputError(f"k_range must be two slice indices [k0, k1], got {k_range!r}")
        k_range = (int(k_range[0]), int(k_range[1]))
        if not 0 <= k_range[0] <= k_range[1]:
            raise InputError(f"slice range must satisfy 0 <= k0 <= k1, got {list(k_range)}")
    direction = body.get("direction", "both")
    if direction not in ("both", "forward", "backward"):
        raise InputError(f"direction must be both, forward or backward, got {direction!r}")
    return k_range, direction


def validate_text(body: Any, key: str, max_chars: int = 2000) -> str:
    if not isinstance(body, dict) or not isinstance(body.get(key), str) or not body[key].strip():
        raise InputError(f'send {{"{key}": "non-empty text"}}')
    if len(body[key]) > max_chars:
        raise InputError(f"{key} is longer than {max_chars} characters; shorten it")
    return body[key]


def validate_context(context: Any) -> dict | None:
    if context is None:
        return None
    if isinstance(context, dict) and set(context) == {"object"} and isinstance(context["object"], int):
        return context
    if isinstance(context, dict) and set(context) == {"box"}:
        return {"box": _finite_numbers(context["box"], "context box", 6)}
    raise InputError('context must be {"object": id} or {"box": [i0, j0, k0, i1, j1, k1]}')


# ----- arrays -----------------------------------------------------------------------------------
def volume_id(array: np.ndarray, spacing, origin, direction) -> str:
    """Content hash over raw voxels (C order), dtype, shape and geometry."""
    h = hashlib.sha256()
    arr = np.ascontiguousarray(array)
    h.update(dumps({"dtype": arr.dtype.str, "shape": list(arr.shape), "spacing": [float(v) for v in spacing],
                    "origin": [float(v) for v in origin],
                    "direction": [float(v) for v in np.asarray(direction, float).reshape(-1)]}))
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def pack_volume(array: np.ndarray, spacing, origin, direction, level: int = 3) -> tuple[str, bytes]:
    """(volume id, upload body). Voxels are little-endian, C order, zstd-compressed."""
    import zstandard

    arr = np.ascontiguousarray(array)
    if arr.dtype.name not in ALLOWED_DTYPES:
        raise InputError(f"voxel type {arr.dtype} is not supported; convert to one of {', '.join(ALLOWED_DTYPES)}")
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    vid = volume_id(arr, spacing, origin, direction)
    header = dumps({"dtype": arr.dtype.name, "shape": list(arr.shape), "spacing": [float(v) for v in spacing],
                    "origin": [float(v) for v in origin],
                    "direction": [float(v) for v in np.asarray(direction, float).reshape(-1)], "id": vid})
    payload = zstandard.ZstdCompressor(level=level).compress(memoryview(arr).cast("B"))
    return vid, MAGIC + struct.pack("<I", len(header)) + header + payload


def unpack_volume(body: bytes, max_voxels: int) -> tuple[str, np.ndarray, dict[str, Any]]:
    """Check and decode an upload: (id, array [k, j, i], geometry). Every check says what to fix."""
    import zstandard

    if len(body) < len(MAGIC) + 4 or body[:len(MAGIC)] != MAGIC:
        raise InputError("the upload is not a medvlsam2 volume; use medvlsam2.protocol.pack_volume")
    (n,) = struct.unpack("<I", body[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if n > 65536 or start + n > len(body):
        raise InputError("the volume header is truncated or too long")
    header = parse_json(body[start:start + n])
    if not isinstance(header, dict):
        raise InputError("the volume header must be a JSON object")
    dtype = header.get("dtype")
    if dtype not in ALLOWED_DTYPES:
        raise InputError(f"voxel type {dtype!r} is not supported; convert to one of {', '.join(ALLOWED_DTYPES)}")
    shape = header.get("shape")
    if not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise InputError(f"shape must be three integers (slices, rows, columns), got {shape!r}")
    if min(shape) <= 0:
        raise InputError(f"shape must be positive, got {shape}")
    voxels = shape[0] * shape[1] * shape[2]
    if voxels > max_voxels:
        raise PayloadTooLarge(f"the volume has {voxels} voxels, more than this server's limit of {max_voxels}; "
                              "crop or resample it, or raise --max-voxels on the server")
    spacing = _finite_numbers(header.get("spacing"), "spacing", 3)
    origin = _finite_numbers(header.get("origin"), "origin", 3)
    direction = _finite_numbers(header.get("direction"), "direction", 9)
    expected = voxels * np.dtype(dtype).itemsize
    try:
        raw = zstandard.ZstdDecompressor().decompress(body[start + n:], max_output_size=expected)
    except zstandard.ZstdError as exc:
        raise InputError(f"the voxel data is not valid zstd ({exc})") from None
    if len(raw) != expected:
        raise InputError(f"the voxel data has {len(raw)} bytes, but shape {shape} of {dtype} needs {expected}")
    array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    vid = volume_id(array, spacing, origin, direction)
    if header.get("id") not in (None, vid):
        raise InputError("the volume id does not match its content; the upload was corrupted, send it again")
    return vid, array, {"spacing": spacing, "origin": origin, "direction": direction}


def encode_result(r: SegmentationResult) -> dict[str, Any]:
    import zstandard

    patch = np.ascontiguousarray(r.patch, dtype=np.uint8)
    return {"object_id": int(r.object_id), "name": r.name, "bbox": list(r.bbox) if r.bbox else None,
            "patch": base64.b64encode(zstandard.ZstdCompressor(level=3).compress(patch.tobytes())).decode(),
            "scores": {str(k): float(v) for k, v in r.scores.items() if v is not None and math.isfinite(v)}}


def decode_result(d: dict[str, Any]) -> SegmentationResult:
    import zstandard

    bbox = tuple(int(v) for v in d["bbox"]) if d.get("bbox") else None
    shape = (bbox[1] - bbox[0], bbox[3] - bbox[2], bbox[5] - bbox[4]) if bbox else (0, 0, 0)
    raw = zstandard.ZstdDecompressor().decompress(base64.b64decode(d["patch"]), max_output_size=max(1, int(np.prod(shape))))
    patch = np.frombuffer(raw, np.uint8).reshape(shape).copy()
    return SegmentationResult(int(d["object_id"]), str(d["name"]), bbox, patch,
                              {int(k): float(v) for k, v in d.get("scores", {}).items()})


def encode_mask(mask: np.ndarray) -> str:
    import zstandard

    return base64.b64encode(zstandard.ZstdCompressor(level=3).compress(np.ascontiguousarray(mask, np.uint8).tobytes())).decode()


def decode_mask(text: str, shape: tuple[int, int, int]) -> np.ndarray:
    import zstandard

    raw = zstandard.ZstdDecompressor().decompress(base64.b64decode(text), max_output_size=int(np.prod(shape)))
    return np.frombuffer(raw, np.uint8).reshape(shape).copy()
