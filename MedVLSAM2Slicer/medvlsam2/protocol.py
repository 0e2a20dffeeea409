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
import reprlib
import struct
from typing import Any

import numpy as np

from . import API_VERSION, __version__
from .errors import Cancelled, CapabilityError, InputError, MedVLSAM2Error, UnknownObjectError
from .results import NotFound, SegmentationResult, TextResult

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
    "redo": "/v1/sessions/{sid}/objects/{obj}/redo",
    "reset": "/v1/sessions/{sid}/objects/{obj}/reset",
    "mask": "/v1/sessions/{sid}/objects/{obj}/mask",
    "mask_prompt": "/v1/sessions/{sid}/objects/{obj}/mask_prompt",
    "text": "/v1/sessions/{sid}/text",
    "ask": "/v1/sessions/{sid}/ask",
    "report": "/v1/sessions/{sid}/report",
    "cancel": "/v1/sessions/{sid}/cancel",
}
MAGIC = b"MVS2VOL1"
ALLOWED_DTYPES = ("uint8", "int8", "uint16", "int16", "int32", "float32", "float64")
JSONL = "application/x-ndjson"
VOLUME_MEDIA_TYPE = "application/x-medvlsam2-volume"


# ----- limits -------------------------------------------------------------------------------------
# Defaults of what one request may hold; the server's flags (``medvlsam2 serve --help``) override those named.
MAX_JSON_BYTES = 1 << 20  # --max-json-kb: any JSON request body
MAX_POINTS = 64  # --max-points: points in one add_points call
MAX_PROMPT_CHARS = 2000  # --max-prompt-chars: a text prompt or question
MAX_NAME_CHARS = 200  # an object name
MAX_JSON_ITEMS = 1024  # entries of any one JSON list or object
MAX_INDEX = float(1 << 24)  # |voxel coordinate|; real bounds are checked against the volume by the engine
MAX_SPACING_MM, MAX_ORIGIN_MM = 1e4, 1e7
DIRECTION_TOLERANCE = 1e-3  # |D^T D - I| per entry
MAX_WINDOW_BYTES = 1 << 24  # zstd window a volume upload may ask the server to allocate
PING_S = 5.0  # a stream sends {"alive": true} after this many silent seconds, so silence means a dead server
_EXCERPT = reprlib.Repr()
_EXCERPT.maxstring, _EXCERPT.maxother, _EXCERPT.maxlist, _EXCERPT.maxdict, _EXCERPT.maxlevel = 24, 24, 4, 4, 2


def excerpt(value: Any) -> str:
    """A short, ASCII-only rendering of a request value for error messages (never the whole value)."""
    return _EXCERPT.repr(value).encode("ascii", "backslashreplace").decode()[:60]


# ----- errors ---------------------------------------------------------------------------------------
class RemoteError(MedVLSAM2Error):
    """The server refused or failed a request; ``code`` and the message come from the server.

    ``retry_after_s`` is set when the server is at capacity (429/503 with ``Retry-After``)."""

    def __init__(self, message: str, code: str = "error", status: int = 0, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.code, self.status, self.retry_after_s = code, status, retry_after_s


class SessionExpired(RemoteError):
    """The server no longer knows this session (lease expired or server restarted)."""


class ServerUnavailable(RemoteError):
    """The server could not be reached or stopped answering mid-call."""


class ServerBusy(RemoteError):
    """The server is at capacity (sessions or queued calls); retry after ``retry_after_s`` seconds."""


class APIVersionMismatch(RemoteError):
    """Client and server speak different protocol versions."""


class PayloadTooLarge(InputError):
    code = "too_large"


class CallTimeout(MedVLSAM2Error):
    """A model call ran past the server's --call-timeout-s; it was cancelled and nothing was changed."""

    code = "timeout"


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def raise_for_error(body: dict[str, Any], status: int, retry_after_s: float | None = None) -> None:
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
    if status in (429, 503) or code in ("too_many_sessions", "busy"):
        raise ServerBusy(message, code, status, retry_after_s)
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
    """Strict JSON: finite numbers of at most 2^53, valid Unicode (no lone surrogates), at most
    ``MAX_JSON_ITEMS`` entries per list or object. Every refusal is an ``InputError`` that says why."""
    try:
        doc = json.loads(raw.decode("utf-8") if raw else "null", parse_constant=_reject_constant)
    except InputError:
        raise
    except RecursionError:
        raise InputError("the JSON body is nested too deeply; send a flat object") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"the request body is not valid JSON ({str(exc)[:80]}); send a JSON object") from None
    _check_json(doc)
    return doc


def _check_json(doc: Any) -> None:
    stack = [doc]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError("text must be valid Unicode; the request holds a lone UTF-16 surrogate "
                                 "(an unpaired \\ud800-\\udfff escape)") from None
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, int):
            if abs(v) > 1 << 53:
                raise InputError(f"JSON integers must be at most 2^53 in magnitude, got one with {len(str(v))} digits")
        elif isinstance(v, (list, dict)):
            if len(v) > MAX_JSON_ITEMS:
                raise InputError(f"a JSON list or object holds {len(v)} entries, more than the limit of {MAX_JSON_ITEMS}")
            if isinstance(v, dict):
                stack.extend(v.keys())
                stack.extend(v.values())
            else:
                stack.extend(v)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()


def _finite_numbers(values: Any, what: str, length: int | None = None, bound: float = MAX_INDEX,
                    unit: str = "") -> list[float]:
    """Numbers (never booleans), finite and within [-bound, bound], checked before any arithmetic."""
    if not isinstance(values, (list, tuple)) or (length is not None and len(values) != length):
        n = f"{length} " if length is not None else ""
        raise InputError(f"{what} must be a list of {n}numbers, got {excerpt(values)}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"{what} must hold finite numbers, got {excerpt(v)}")
        if abs(v) > bound:
            if not unit:  # voxel coordinates
                raise InputError(f"{what} is outside the volume: {excerpt(v)} is beyond any voxel index ({bound:g})")
            raise InputError(f"{what} must hold numbers between -{bound:g} and {bound:g} {unit}, got {excerpt(v)}")
        out.append(float(v))
    return out


def _is_int(v: Any) -> bool:
    """Exactly a JSON integer: booleans and floats such as 2.0 are refused."""
    return isinstance(v, int) and not isinstance(v, bool)


def _body(body: Any, usage: str) -> dict:
    if not isinstance(body, dict):
        raise InputError(f"send {usage}")
    return body


def validate_points(body: Any, max_points: int = MAX_POINTS) -> tuple[list[list[float]], list[int]]:
    """``{"points": [[i, j, k], ...], "labels": [1 | -1, ...]}`` with at most ``max_points`` points."""
    usage = '{"points": [[i, j, k], ...], "labels": [1 or -1, ...]}'
    body = _body(body, usage)
    if "points" not in body or "labels" not in body:
        raise InputError(f"send {usage}")
    points = body["points"]
    if not isinstance(points, list) or not points:
        raise InputError("points must be a non-empty list of [i, j, k] voxel coordinates")
    if len(points) > max_points:
        raise InputError(f"{len(points)} points in one call, more than this server's limit of {max_points}; "
                         "send them in several calls (or raise --max-points on the server)")
    pts = [_finite_numbers(p, "each point", 3) for p in points]
    labels = body["labels"]
    if not isinstance(labels, list) or len(labels) != len(pts) or any(not _is_int(v) or v not in (1, -1) for v in labels):
        raise InputError(f"labels must hold one +1 (include) or -1 (exclude) per point ({len(pts)} points)")
    return pts, [int(v) for v in labels]


MAX_SLICE_SIDE = 4096  # a mask prompt is one slice; bounds its decompressed size before any work


def validate_mask_prompt(body: Any) -> tuple[int, np.ndarray]:
    """``{"k": k, "shape": [rows, cols], "mask": encode_mask(mask)}`` -> (k, uint8 mask [rows, cols])."""
    if not isinstance(body, dict) or not {"k", "shape", "mask"} <= set(body):
        raise InputError('send {"k": slice, "shape": [rows, cols], "mask": zstd+base64 uint8 mask}')
    k, shape, text = body["k"], body["shape"], body["mask"]
    if not _is_int(k) or not 0 <= k <= MAX_INDEX:
        raise InputError(f"k must be a non-negative slice index, got {excerpt(k)}")
    if (not isinstance(shape, list) or len(shape) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= MAX_SLICE_SIDE for v in shape)):
        raise InputError(f"shape must be [rows, cols], each 1..{MAX_SLICE_SIDE}")
    if not isinstance(text, str):
        raise InputError("mask must be a zstd-compressed, base64 text")
    try:
        mask = decode_mask(text, (1, shape[0], shape[1]))[0]
    except Exception:
        raise InputError("mask is not a zstd+base64 uint8 array of the given shape") from None
    return k, mask


def validate_box(body: Any) -> tuple[list[float], int | None]:
    """``{"box": [i0, j0, i1, j1], "k": k}`` or ``{"box": [i0, j0, k0, i1, j1, k1]}``."""
    body = _body(body, '{"box": [i0, j0, i1, j1], "k": slice} or {"box": [i0, j0, k0, i1, j1, k1]}')
    if "box" not in body:
        raise InputError('send {"box": [i0, j0, i1, j1], "k": slice} or {"box": [i0, j0, k0, i1, j1, k1]}')
    box = body["box"]
    if not isinstance(box, list) or len(box) not in (4, 6):
        raise InputError("box must have 4 numbers (with k) or 6 numbers (3D box)")
    box = _finite_numbers(box, "box")
    k = body.get("k")
    if k is not None and (not _is_int(k) or not 0 <= k <= MAX_INDEX):
        raise InputError(f"k must be a non-negative slice index, got {excerpt(k)}")
    if len(box) == 4 and k is None:
        raise InputError("a 2D box needs its slice index k")
    return box, k


def validate_propagate(body: Any) -> tuple[tuple[int, int] | None, str]:
    body = _body({} if body is None else body,
                 '{"k_range": [k0, k1] or null, "direction": "both"|"forward"|"backward"}')
    k_range = body.get("k_range")
    if k_range is not None:
        if not isinstance(k_range, list) or len(k_range) != 2 or not all(_is_int(v) for v in k_range):
            raise InputError(f"k_range must be two slice indices [k0, k1], got {excerpt(k_range)}")
        k_range = (int(k_range[0]), int(k_range[1]))
        if not 0 <= k_range[0] <= k_range[1] <= MAX_INDEX:
            raise InputError(f"slice range must satisfy 0 <= k0 <= k1, got {list(k_range)}")
    direction = body.get("direction", "both")
    if direction not in ("both", "forward", "backward"):
        raise InputError(f"direction must be both, forward or backward, got {excerpt(direction)}")
    return k_range, direction


def validate_text(body: Any, key: str, max_chars: int = MAX_PROMPT_CHARS) -> str:
    if not isinstance(body, dict) or not isinstance(body.get(key), str) or not body[key].strip():
        raise InputError(f'send {{"{key}": "non-empty text"}}')
    if len(body[key]) > max_chars:
        raise InputError(f"{key} is longer than {max_chars} characters; shorten it")
    return body[key]


def validate_name(body: Any) -> str | None:
    """``{"name": "liver"}``, ``{}`` or no body: an object's display name (or None for a default one)."""
    body = _body({} if body is None else body, '{"name": "text"} or {}')
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME_CHARS):
        raise InputError(f"name must be text of at most {MAX_NAME_CHARS} characters")
    return name


def validate_timeout(body: Any, server_timeout_s: float) -> float:
    """The call's deadline: the server's ``--call-timeout-s``, or a shorter ``"timeout_s"`` the client sends."""
    t = body.get("timeout_s") if isinstance(body, dict) else None
    if t is None:
        return server_timeout_s
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= server_timeout_s:
        raise InputError(f"timeout_s must be a number of seconds above 0 and at most this server's "
                         f"{server_timeout_s:g}, got {excerpt(t)}")
    return float(t)


def validate_volume_id(body: Any) -> str:
    vid = body.get("volume_id") if isinstance(body, dict) else None
    if not isinstance(vid, str) or len(vid) != 64 or any(c not in "0123456789abcdef" for c in vid):
        raise InputError('send {"volume_id": "<the 64 hex digits from POST /v1/volumes>"}')
    return vid


def validate_context(context: Any) -> dict | None:
    if context is None:
        return None
    if isinstance(context, dict) and set(context) == {"object"} and _is_int(context["object"]) \
            and 1 <= context["object"] <= MAX_INDEX:
        return context
    if isinstance(context, dict) and set(context) == {"box"}:
        return {"box": _finite_numbers(context["box"], "context box", 6)}
    raise InputError('context must be {"object": id} (an integer from 1) or {"box": [i0, j0, k0, i1, j1, k1]}')


def validate_geometry(header: dict) -> dict[str, list[float]]:
    """Spacing positive, origin finite, direction orthonormal (a rotation or reflection of the axes)."""
    spacing = _finite_numbers(header.get("spacing"), "spacing", 3, MAX_SPACING_MM, "mm")
    if min(spacing) <= 0:
        raise InputError(f"spacing must be three positive numbers in mm, got {spacing}")
    origin = _finite_numbers(header.get("origin"), "origin", 3, MAX_ORIGIN_MM, "mm")
    direction = _finite_numbers(header.get("direction"), "direction", 9, 1.0 + DIRECTION_TOLERANCE, "(unit vectors)")
    d = np.reshape(direction, (3, 3))
    if np.abs(d.T @ d - np.eye(3)).max() > DIRECTION_TOLERANCE:
        raise InputError("direction must be an orthonormal 3x3 matrix (unit, perpendicular axes) within "
                         f"{DIRECTION_TOLERANCE:g}; resample a sheared or scaled volume first")
    return {"spacing": spacing, "origin": origin, "direction": direction}


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


def decompress_exact(payload: bytes | memoryview, out: np.ndarray, what: str = "the voxel data") -> np.ndarray:
    """Decompress zstd ``payload`` into the preallocated ``out`` (its size is the declared size); never
    produces more: a frame that declares or expands to another size is refused before the excess is made."""
    import zstandard

    expected = out.nbytes
    try:
        declared = zstandard.get_frame_parameters(payload).content_size
    except zstandard.ZstdError:
        raise InputError(f"{what} is not valid zstd; use medvlsam2.protocol to encode it") from None
    if declared not in (zstandard.CONTENTSIZE_UNKNOWN, expected):
        raise InputError(f"{what} declares {declared} bytes, but its header's shape and type need {expected}")
    view, done = memoryview(out.reshape(-1).view(np.uint8)), 0
    try:
        with zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES).stream_reader(
                payload, read_across_frames=True) as reader:
            while done < expected and (n := reader.readinto(view[done:])):
                done += n
            extra = reader.read(1) if done == expected else b""
    except zstandard.ZstdError as exc:
        raise InputError(f"{what} is not valid zstd ({str(exc)[:120]})") from None
    if done != expected or extra:
        size = f"more than {expected}" if extra else str(done)
        raise InputError(f"{what} decompresses to {size} bytes, but its header's shape and type need {expected}")
    return out


def _empty(shape, dtype) -> np.ndarray:
    try:
        return np.empty(shape, dtype)
    except MemoryError:
        raise PayloadTooLarge(f"there is not enough memory on the server for an array of shape {list(shape)}; "
                              "crop or resample the volume") from None


def unpack_volume(body: bytes | memoryview, max_voxels: int) -> tuple[str, np.ndarray, dict[str, Any]]:
    """Check and decode an upload: (id, array [k, j, i], geometry). Every check says what to fix and runs
    before the voxels are decompressed; decompression stops at the declared size."""
    body = memoryview(body)
    if len(body) < len(MAGIC) + 4 or bytes(body[:len(MAGIC)]) != MAGIC:
        raise InputError("the upload is not a medvlsam2 volume; use medvlsam2.protocol.pack_volume")
    (n,) = struct.unpack("<I", body[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if n > 65536 or start + n > len(body):
        raise InputError("the volume header is truncated or too long")
    header = parse_json(bytes(body[start:start + n]))
    if not isinstance(header, dict):
        raise InputError("the volume header must be a JSON object")
    dtype = header.get("dtype")
    if dtype not in ALLOWED_DTYPES:
        raise InputError(f"voxel type {excerpt(dtype)} is not supported; convert to one of {', '.join(ALLOWED_DTYPES)}")
    shape = header.get("shape")
    if not isinstance(shape, list) or len(shape) != 3 or not all(_is_int(s) for s in shape):
        raise InputError(f"shape must be three integers (slices, rows, columns), got {excerpt(shape)}")
    if min(shape) <= 0:
        raise InputError(f"shape must be positive, got {shape}")
    voxels = shape[0] * shape[1] * shape[2]
    if voxels > max_voxels:
        raise PayloadTooLarge(f"the volume has {voxels} voxels, more than this server's limit of {max_voxels}; "
                              "crop or resample it, or raise --max-voxels on the server")
    geometry = validate_geometry(header)
    array = decompress_exact(body[start + n:], _empty(shape, np.dtype(dtype).newbyteorder("<")))
    vid = volume_id(array, geometry["spacing"], geometry["origin"], geometry["direction"])
    if header.get("id") not in (None, vid):
        raise InputError("the volume id does not match its content; the upload was corrupted, send it again")
    return vid, array, geometry


def encode_result(r: SegmentationResult) -> dict[str, Any]:
    import zstandard

    patch = np.ascontiguousarray(r.patch, dtype=np.uint8)
    return {"object_id": int(r.object_id), "name": r.name, "bbox": list(r.bbox) if r.bbox else None,
            "patch": base64.b64encode(zstandard.ZstdCompressor(level=3).compress(patch.tobytes())).decode(),
            "scores": {str(k): float(v) for k, v in r.scores.items() if v is not None and math.isfinite(v)},
            "warnings": [str(w) for w in r.warnings]}


def decode_result(d: dict[str, Any]) -> SegmentationResult:
    """The changed box and its patch only (decoded into a patch-sized array, never a whole volume)."""
    bbox = tuple(int(v) for v in d["bbox"]) if d.get("bbox") else None
    shape = (bbox[1] - bbox[0], bbox[3] - bbox[2], bbox[5] - bbox[4]) if bbox else (0, 0, 0)
    if min(shape) < 0:
        raise InputError(f"the server sent an inverted box {bbox}")
    patch = decompress_exact(base64.b64decode(d["patch"]), np.empty(shape, np.uint8), "the result patch")
    return SegmentationResult(int(d["object_id"]), str(d["name"]), bbox, patch,
                              {int(k): float(v) for k, v in d.get("scores", {}).items()},
                              [str(w) for w in d.get("warnings", [])])


def encode_text_result(t: TextResult) -> dict[str, Any]:
    return {"results": [encode_result(r) for r in t.found],
            "not_found": [{"target": n.target, "reason": n.reason} for n in t.not_found]}


def decode_text_result(d: dict[str, Any]) -> TextResult:
    return TextResult([decode_result(r) for r in d["results"]],
                      [NotFound(str(n["target"]), str(n["reason"])) for n in d.get("not_found", [])])


def encode_mask(mask: np.ndarray) -> str:
    import zstandard

    return base64.b64encode(zstandard.ZstdCompressor(level=3).compress(np.ascontiguousarray(mask, np.uint8).tobytes())).decode()


def decode_mask(text: str, shape: tuple[int, int, int]) -> np.ndarray:
    return decompress_exact(base64.b64decode(text), np.empty(shape, np.uint8), "the mask")
