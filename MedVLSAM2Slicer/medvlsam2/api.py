"""The Session API written once (torch-free): what a session can do, its types, and its wire operations.

``SessionAPI`` is what the local ``Session``, the client's ``RemoteSession``, the Slicer panel's controller and
the CLI rely on. ``OPERATIONS`` is the one table of its calls: the server registers one route per entry and
``RemoteSession`` gets one method per entry, so an operation cannot exist on one side only
(``Testing/Python/test_conformance.py`` checks every implementation against it).

Geometry (docs/ARCHITECTURE.md): prompts are voxel indices (i, j, k); a prompt ``Box`` is inclusive corners
(i0, j0, k0, i1, j1, k1); a result's changed region ``BBox`` is half-open (k0, k1, j0, j1, i0, i1), the
numpy order of the [k, j, i] arrays it slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Protocol, runtime_checkable

import numpy as np

from . import protocol as P
from .results import BBox, NotFound, SegmentationResult, TextResult
from .utils.cancel import CancelToken

Progress = Callable[[int, int], None]


class Box(NamedTuple):
    """A 3D prompt box: inclusive corner voxels (i, j, k). A 2D box on slice k is (i0, j0, i1, j1) plus k."""
    i0: float
    j0: float
    k0: float
    i1: float
    j1: float
    k1: float


@runtime_checkable
class SessionAPI(Protocol):
    """One volume, one model: objects prompted by clicks, boxes, masks or text; streamed answers.

    Every call that changes a mask returns a ``SegmentationResult`` (the changed ``BBox`` and its patch); a
    failed or cancelled call leaves the masks as they were."""

    capabilities: frozenset[str]

    def add_object(self, name: str | None = None) -> int: ...
    def objects(self) -> dict[int, str]: ...
    def mask(self, obj: int) -> np.ndarray: ...
    def bound(self, obj: int) -> tuple[int, int] | None: ...
    def remove(self, obj: int) -> None: ...
    def add_points(self, obj: int, points_ijk, labels) -> SegmentationResult: ...
    def add_box(self, obj: int, box, k: int | None = None, ends: bool = False) -> SegmentationResult: ...
    def add_mask(self, obj: int, k: int, mask2d) -> SegmentationResult: ...
    def propagate(self, obj: int, k_range: tuple[int, int] | None = None, direction: str = "both",
                  cancel: CancelToken | None = None, progress: Progress | None = None) -> SegmentationResult: ...
    def segment_text(self, prompt: str, cancel: CancelToken | None = None, progress: Progress | None = None,
                     force: bool = False) -> TextResult: ...
    def undo(self, obj: int) -> SegmentationResult: ...
    def redo(self, obj: int) -> SegmentationResult: ...
    def reset(self, obj: int) -> SegmentationResult: ...
    def ask(self, question: str, context: dict | None = None, cancel: CancelToken | None = None) -> Iterator[str]: ...
    def report(self, cancel: CancelToken | None = None) -> Iterator[str]: ...
    def close(self) -> None: ...


# ----- the wire table ---------------------------------------------------------------------------------
# kind: "call" answers one JSON body; "prompt" too, and a prompt that finishes past its timeout is taken back
# with undo; "stream" answers JSON lines (progress, then the result); "tokens" streams an answer's tokens.
CALL, PROMPT, STREAM, TOKENS = "call", "prompt", "stream", "tokens"


@dataclass(frozen=True)
class Operation:
    name: str  # the SessionAPI method
    http: str  # GET | POST | DELETE
    path: str  # under /v1/sessions/{sid}; "{obj}" when the first argument is an object id
    kind: str
    request: Callable[..., dict]  # client: the method's arguments (after obj) -> JSON body
    parse: Callable[[Any, Any], dict]  # server: (JSON body, Limits) -> keyword arguments of the engine's method
    reply: Callable[[Any], dict]  # server: the engine's return value -> JSON reply (tokens: each token)
    decode: Callable[[dict], Any]  # client: JSON reply -> return value

    @property
    def takes_object(self) -> bool:
        return "{obj}" in self.path


def _operations() -> dict[str, Operation]:
    def none(body, limits) -> dict:
        return {}

    result = (lambda r: {"result": P.encode_result(r)}, lambda d: P.decode_result(d["result"]))
    ops = [
        Operation("add_object", "POST", "/objects", CALL, lambda name=None: {"name": name},
                  lambda b, lim: {"name": P.validate_name(b)}, lambda obj: {"object_id": int(obj)},
                  lambda d: int(d["object_id"])),
        Operation("objects", "GET", "/objects", CALL, dict, none,
                  lambda objs: {"objects": {str(k): v for k, v in objs.items()}},
                  lambda d: {int(k): str(v) for k, v in d["objects"].items()}),
        Operation("mask", "GET", "/objects/{obj}/mask", CALL, dict, none,
                  lambda m: {"shape": list(m.shape), "mask": P.encode_mask(m)},
                  lambda d: P.decode_mask(d["mask"], tuple(d["shape"]))),
        Operation("bound", "GET", "/objects/{obj}/bound", CALL, dict, none,
                  lambda b: {"bound": None if b is None else [int(b[0]), int(b[1])]},
                  lambda d: None if d["bound"] is None else (int(d["bound"][0]), int(d["bound"][1]))),
        Operation("remove", "DELETE", "/objects/{obj}", CALL, dict, none, lambda _: {"removed": True}, lambda d: None),
        Operation("add_points", "POST", "/objects/{obj}/points", PROMPT,
                  lambda points_ijk, labels: {"points": np.asarray(points_ijk, np.float64).reshape(-1, 3).tolist(),
                                              "labels": [int(v) for v in np.asarray(labels).reshape(-1)]},
                  lambda b, lim: dict(zip(("points_ijk", "labels"), P.validate_points(b, lim.max_points))), *result),
        Operation("add_box", "POST", "/objects/{obj}/box", PROMPT,
                  lambda box, k=None, ends=False: {"box": [float(v) for v in box], "k": None if k is None else int(k),
                                                   "ends": bool(ends)},
                  lambda b, lim: {**dict(zip(("box", "k"), P.validate_box(b))), "ends": P.validate_flag(b, "ends")},
                  *result),
        Operation("add_mask", "POST", "/objects/{obj}/mask_prompt", PROMPT,
                  lambda k, mask2d: {"k": int(k), "shape": list(np.shape(mask2d)),
                                     "mask": P.encode_mask(np.asarray(mask2d, np.uint8))},
                  lambda b, lim: dict(zip(("k", "mask2d"), P.validate_mask_prompt(b))), *result),
        Operation("propagate", "POST", "/objects/{obj}/propagate", STREAM,
                  lambda k_range=None, direction="both": {
                      "k_range": None if k_range is None else [int(k_range[0]), int(k_range[1])], "direction": direction},
                  lambda b, lim: dict(zip(("k_range", "direction"), P.validate_propagate(b))), *result),
        Operation("segment_text", "POST", "/text", STREAM, lambda prompt, force=False: {"prompt": prompt, "force": force},
                  lambda b, lim: {"prompt": P.validate_text(b, "prompt", lim.max_prompt_chars),
                                  "force": P.validate_flag(b, "force")},
                  P.encode_text_result, P.decode_text_result),
        Operation("undo", "POST", "/objects/{obj}/undo", CALL, dict, none, *result),
        Operation("redo", "POST", "/objects/{obj}/redo", CALL, dict, none, *result),
        Operation("reset", "POST", "/objects/{obj}/reset", CALL, dict, none, *result),
        Operation("ask", "POST", "/ask", TOKENS, lambda question, context=None: {"question": question, "context": context},
                  lambda b, lim: {"question": P.validate_text(b, "question", lim.max_prompt_chars),
                                  "context": P.validate_context(b.get("context"))}, str, str),
        Operation("report", "POST", "/report", TOKENS, dict, none, str, str),
    ]
    return {op.name: op for op in ops}


OPERATIONS: dict[str, Operation] = _operations()
LIFECYCLE = ("close",)  # SessionAPI members that are not one call on the server's session (close deletes it)

__all__ = ["BBox", "Box", "LIFECYCLE", "NotFound", "OPERATIONS", "Operation", "Progress", "SegmentationResult",
           "SessionAPI", "TextResult"]
