"""Torch-free client of ``medvlsam2 serve`` with the local ``Session``'s method names.

``Client(url, token).open_session(volume)`` uploads the volume once (skipped when the server already
holds the same content hash) and returns a ``RemoteSession``; use it as a context manager (or call
``close()``) so the server frees it at once. The session keeps one local mask per object and writes
each result's changed box into it in place, only after the call succeeded, so a failed, cancelled or
interrupted call leaves the caller's previous mask unchanged. When the server forgot the session
(lease expired or restart), the session re-uploads if needed, replays the calls that built its
objects, and retries. A stream that sends nothing (not even its ``alive`` pings) for
``stream_silence_s`` is treated like a dead server.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Iterator

import numpy as np

from . import API_VERSION
from .errors import Cancelled, InputError
from .protocol import (JSONL, PING_S, VOLUME_MEDIA_TYPE, RemoteError, ServerBusy, ServerUnavailable, SessionExpired,
                       check_api_version, decode_mask, decode_result, decode_text_result, encode_mask, pack_volume, raise_for_error,
                       volume_id)
from .results import SegmentationResult, TextResult
from .utils.cancel import CancelToken

Progress = Callable[[int, int], None]


def _httpx():
    try:
        import httpx
    except ModuleNotFoundError:
        raise InputError("the model client needs the 'httpx' package; install it into this Python "
                         "(in Slicer: slicer.util.pip_install('httpx'))") from None
    return httpx


class Client:
    """Connection to one server. ``retries`` applies to calls that are safe to repeat; ``stream_silence_s``
    is how long a stream may send nothing before the server counts as gone (the server pings every
    ``PING_S`` seconds)."""

    def __init__(self, url: str, token: str, timeout: float = 60.0, retries: int = 3, backoff_s: float = 0.25,
                 heartbeat: bool = True, stream_silence_s: float = 6 * PING_S) -> None:
        httpx = _httpx()
        self.url, self.timeout, self.retries, self.backoff_s = url.rstrip("/"), timeout, retries, backoff_s
        self.heartbeat, self.stream_silence_s = heartbeat, stream_silence_s
        self._http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"},
                                  timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)))
        self._version_checked = False
        self._capabilities: frozenset[str] = frozenset()
        self.uploads = 0  # volumes actually sent (a reconnect with the same content sends none)

    # ----- plumbing -------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, json_body: Any = None, content: bytes | None = None,
                idempotent: bool = True, headers: dict | None = None) -> dict:
        """One call with retries and backoff for transient failures; errors become medvlsam2 exceptions."""
        httpx = _httpx()
        for attempt in range(self.retries + 1):
            try:
                r = self._http.request(method, path, json=json_body, content=content, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing reached the server: safe to retry
                if attempt < self.retries:
                    time.sleep(self.backoff_s * 2 ** attempt)
                    continue
                raise ServerUnavailable(f"cannot reach the model server at {self.url} ({type(exc).__name__}); "
                                        "is it running? (check its log)", "unreachable") from None
            except httpx.TransportError as exc:
                if idempotent and attempt < self.retries:
                    time.sleep(self.backoff_s * 2 ** attempt)
                    continue
                raise ServerUnavailable(f"the model server at {self.url} stopped answering during {method} {path} "
                                        f"({type(exc).__name__}); your previous result is kept", "unreachable") from None
            if r.status_code in (502, 503, 504) and idempotent and attempt < self.retries:
                time.sleep(self.backoff_s * 2 ** attempt)
                continue
            return self._decode(r)
        raise AssertionError("unreachable")

    @staticmethod
    def _decode(r) -> dict:
        try:
            body = r.json()
        except ValueError:
            body = {"error": {"code": "bad_response", "message": f"HTTP {r.status_code} without a JSON body"}} \
                if r.status_code >= 400 else {}
        if r.status_code >= 400:
            if not isinstance(body, dict) or "error" not in body:
                body = {"error": {"code": f"http_{r.status_code}", "message": str(body)[:200]}}
            retry = r.headers.get("retry-after", "")
            raise_for_error(body, r.status_code, float(retry) if retry.isdigit() else None)
        return body

    def stream(self, path: str, body: Any, on_item: Callable[[dict], None], cancel: CancelToken | None = None,
               sid: str | None = None) -> dict:
        """POST returning JSON lines; ``on_item`` gets progress/token lines; returns the final line."""
        httpx = _httpx()
        stop = threading.Event()
        if cancel is not None and sid is not None:  # forward a cancel to the server as soon as it is set
            threading.Thread(target=self._forward_cancel, args=(cancel, sid, stop), daemon=True).start()
        try:
            with self._http.stream("POST", path, json=body,
                                   timeout=httpx.Timeout(self.timeout, read=self.stream_silence_s)) as r:
                if r.status_code >= 400:
                    r.read()
                    self._decode(r)
                for line in r.iter_lines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    if "error" in item:
                        raise_for_error(item, 200)
                    if "alive" in item:  # the server is waiting for the model: it is not gone
                        continue
                    if "progress" in item or "token" in item:
                        on_item(item)
                        continue
                    return item
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise ServerUnavailable(f"cannot reach the model server at {self.url}; is it running? (check its log)",
                                    "unreachable") from None
        except httpx.ReadTimeout:
            if sid is not None:  # a frozen (not dead) server should still stop the work nobody waits for
                threading.Thread(target=self._cancel_quietly, args=(sid,), daemon=True).start()
            raise ServerUnavailable(f"the model server at {self.url} sent nothing for {self.stream_silence_s:g} s during "
                                    f"{path.rsplit('/', 1)[-1]}, so it counts as stopped; your previous result is kept. "
                                    "Check the server log", "unreachable") from None
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"the model server at {self.url} stopped answering during {path.rsplit('/', 1)[-1]} "
                                    f"({type(exc).__name__}); your previous result is kept. Check the server log",
                                    "unreachable") from None
        finally:
            stop.set()
        raise ServerUnavailable("the model server closed the stream before sending a result; your previous result "
                                "is kept. Check the server log", "unreachable")

    def _forward_cancel(self, cancel: CancelToken, sid: str, stop: threading.Event) -> None:
        while not stop.wait(0.05):
            if cancel.cancelled:
                self._cancel_quietly(sid)
                return

    def _cancel_quietly(self, sid: str) -> None:
        try:
            self._http.post(f"/v1/sessions/{sid}/cancel", timeout=5.0)
        except Exception:  # best effort: the stream (or its timeout) reports what happened
            pass

    # ----- service --------------------------------------------------------------------------------
    def health(self) -> dict:
        """Liveness and load: open sessions, held bytes, queue length."""
        return self.request("GET", "/v1/health")

    def version(self) -> dict:
        """Server and API version, model, device and free memory; refuses another API version."""
        info = self.request("GET", "/v1/version")
        check_api_version(int(info.get("api_version", -1)), str(info.get("server_version", "?")))
        self._version_checked = True
        self._capabilities = frozenset(info.get("capabilities", ()))
        return info

    info = version  # what the Slicer module's connection reads (device, memory_gb)

    @property
    def capabilities(self) -> frozenset[str]:
        """What the served model can do (``medvlsam2.capabilities`` names), as /v1/version reported it."""
        if not self._version_checked:
            self.version()
        return self._capabilities

    def ensure_volume(self, volume) -> str:
        """Upload ``volume`` unless the server already holds the same content; returns its id."""
        vid = volume_id(volume.array, volume.spacing, volume.origin, volume.direction)
        try:
            self.request("GET", f"/v1/volumes/{vid}")
            return vid
        except RemoteError as exc:
            if exc.code != "unknown_volume":
                raise
        vid2, body = pack_volume(volume.array, volume.spacing, volume.origin, volume.direction)
        got = self.request("POST", "/v1/volumes", content=body, headers={"content-type": VOLUME_MEDIA_TYPE})
        self.uploads += 1
        return got.get("volume_id", vid2)

    def open_session(self, volume) -> "RemoteSession":
        """Upload (once) and open a session on ``volume`` (a ``medvlsam2.io.volume.Volume``)."""
        if not self._version_checked:
            self.version()
        return RemoteSession(self, volume)

    def close(self) -> None:
        self._http.close()


class RemoteSession:
    """A server-side ``Session`` with the same method names and return types.

    A context manager: ``with client.open_session(volume) as s: ...`` closes the server session at the
    end. Heartbeats (every ``liveness_s / 4``) only tell the server the client is alive; a session
    without real calls for the server's ``lease_s`` is closed there all the same."""

    def __init__(self, client: Client, volume) -> None:
        self._c, self.volume = client, volume
        self.capabilities = client.capabilities  # same attribute as a local model's
        self.shape = tuple(int(s) for s in np.shape(volume.array))
        self._masks: dict[int, np.ndarray] = {}
        self._names: dict[int, str] = {}
        self._journal: list[tuple[str, tuple]] = []  # successful state-changing calls, to re-seed a new session
        self._lock = threading.RLock()
        self.reopened = 0
        self.sid = ""
        self._closed = threading.Event()
        self._open()
        self._beater: threading.Thread | None = None
        if client.heartbeat:
            self._beater = threading.Thread(target=self._heartbeat_loop, name="medvlsam2-heartbeat", daemon=True)
            self._beater.start()

    def __enter__(self) -> "RemoteSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # ----- plumbing -------------------------------------------------------------------------------
    def _open(self) -> None:
        vid = self._c.ensure_volume(self.volume)
        try:
            got = self._c.request("POST", "/v1/sessions", json_body={"volume_id": vid}, idempotent=False)
        except RemoteError as exc:
            if exc.code != "unknown_volume":  # dropped between the check and the open: upload again
                raise
            got = self._c.request("POST", "/v1/sessions", json_body={"volume_id": self._c.ensure_volume(self.volume)},
                                  idempotent=False)
        self.sid, self.lease_s = got["session_id"], float(got.get("lease_s", 600))
        self.liveness_s = float(got.get("liveness_s", self.lease_s))

    def _heartbeat_loop(self) -> None:
        while not self._closed.wait(max(0.2, self.liveness_s / 4)):
            try:
                self._c.request("POST", f"/v1/sessions/{self.sid}/heartbeat")
            except Exception:  # the next real call recovers
                pass

    def _path(self, tail: str) -> str:
        return f"/v1/sessions/{self.sid}{tail}"

    def _raw(self, op: str, args: tuple, cancel=None, progress=None, on_token=None) -> Any:
        """One server call for ``op`` (no local state changes)."""
        def items(item: dict) -> None:
            if "progress" in item and progress is not None:
                progress(int(item["progress"][0]), int(item["progress"][1]))
            if "token" in item and on_token is not None:
                on_token(item["token"])

        req = self._c.request
        if op == "add_object":
            return req("POST", self._path("/objects"), json_body={"name": args[0]}, idempotent=False)["object_id"]
        if op == "points":
            body = {"points": args[1], "labels": args[2]}
            return decode_result(req("POST", self._path(f"/objects/{args[0]}/points"), json_body=body, idempotent=False)["result"])
        if op == "box":
            body = {"box": args[1], "k": args[2]}
            return decode_result(req("POST", self._path(f"/objects/{args[0]}/box"), json_body=body, idempotent=False)["result"])
        if op == "mask_prompt":
            body = {"k": args[1], "shape": list(args[2].shape), "mask": encode_mask(args[2])}
            return decode_result(req("POST", self._path(f"/objects/{args[0]}/mask_prompt"), json_body=body,
                                     idempotent=False)["result"])
        if op in ("undo", "redo", "reset"):
            return decode_result(req("POST", self._path(f"/objects/{args[0]}/{op}"), idempotent=False)["result"])
        if op == "remove":
            return req("DELETE", self._path(f"/objects/{args[0]}"), idempotent=False)
        if op == "propagate":
            body = {"k_range": list(args[1]) if args[1] is not None else None, "direction": args[2]}
            got = self._c.stream(self._path(f"/objects/{args[0]}/propagate"), body, items, cancel, self.sid)
            return decode_result(got["result"])
        if op == "text":
            got = self._c.stream(self._path("/text"), {"prompt": args[0]}, items, cancel, self.sid)
            return decode_text_result(got)
        raise AssertionError(op)

    def _call(self, op: str, args: tuple, cancel=None, progress=None) -> Any:
        """Run ``op``; after SessionExpired re-open, re-seed from the journal and retry once."""
        with self._lock:
            self._check_open()
            try:
                out = self._raw(op, args, cancel, progress)
            except SessionExpired:
                self._reseed()
                out = self._raw(op, args, cancel, progress)
            self._journal.append((op, args))
            return out

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise InputError("this session was closed; open a new one with Client.open_session(volume)")

    def _reseed(self) -> None:
        self._open()
        self.reopened += 1
        for op, args in self._journal:
            self._raw(op, args)

    def _apply(self, r: SegmentationResult) -> SegmentationResult:
        """Write the (already decoded, so successful) result's patch into the object's mask in place."""
        if r.bbox is not None:
            k0, k1, j0, j1, i0, i1 = r.bbox
            if not (0 <= k0 <= k1 <= self.shape[0] and 0 <= j0 <= j1 <= self.shape[1] and 0 <= i0 <= i1 <= self.shape[2]):
                raise RemoteError(f"the server sent a box {r.bbox} outside the volume {self.shape}; your previous "
                                  "result is kept", "bad_response")
        mask = self._masks.get(r.object_id)
        if mask is None:
            mask = self._masks[r.object_id] = np.zeros(self.shape, np.uint8)
        r.apply_to(mask)
        self._names[r.object_id] = r.name
        return r

    def _known(self, obj: int) -> int:
        obj = int(obj)
        if obj not in self._masks:
            from .errors import UnknownObjectError

            raise UnknownObjectError(f"unknown object {obj}; existing objects: {sorted(self._masks) or 'none'}")
        return obj

    # ----- Session API ----------------------------------------------------------------------------
    def add_object(self, name: str | None = None) -> int:
        obj = int(self._call("add_object", (name,)))
        self._masks[obj], self._names[obj] = np.zeros(self.shape, np.uint8), name or f"Segment_{obj}"
        return obj

    def objects(self) -> dict[int, str]:
        return dict(self._names)

    def mask(self, obj: int) -> np.ndarray:
        """The local copy of the object's mask (no round trip)."""
        return self._masks[self._known(obj)].copy()

    def fetch_mask(self, obj: int) -> np.ndarray:
        """The server's mask of ``obj`` (to check the local copy)."""
        with self._lock:
            self._check_open()
            try:
                got = self._c.request("GET", self._path(f"/objects/{int(obj)}/mask"))
            except SessionExpired:
                self._reseed()
                got = self._c.request("GET", self._path(f"/objects/{int(obj)}/mask"))
        return decode_mask(got["mask"], tuple(got["shape"]))

    def remove(self, obj: int) -> None:
        self._call("remove", (int(obj),))
        self._masks.pop(int(obj), None)
        self._names.pop(int(obj), None)

    def add_points(self, obj: int, points_ijk, labels) -> SegmentationResult:
        pts = np.asarray(points_ijk, dtype=np.float64).reshape(-1, 3).tolist()
        lab = [int(v) for v in np.asarray(labels).reshape(-1)]
        return self._apply(self._call("points", (int(obj), pts, lab)))

    def add_mask(self, obj: int, k: int, mask2d) -> SegmentationResult:
        return self._apply(self._call("mask_prompt", (int(obj), int(k), np.asarray(mask2d, dtype=np.uint8))))

    def add_box(self, obj: int, box, k: int | None = None) -> SegmentationResult:
        return self._apply(self._call("box", (int(obj), [float(v) for v in box], None if k is None else int(k))))

    def propagate(self, obj: int, k_range: tuple[int, int] | None = None, direction: str = "both",
                  cancel: CancelToken | None = None, progress: Progress | None = None) -> SegmentationResult:
        k_range = None if k_range is None else (int(k_range[0]), int(k_range[1]))
        return self._apply(self._call("propagate", (int(obj), k_range, direction), cancel, progress))

    def segment_text(self, prompt: str, cancel: CancelToken | None = None,
                     progress: Progress | None = None) -> TextResult:
        out = self._call("text", (prompt,), cancel, progress)
        for r in out.found:
            self._apply(r)
        return out

    def undo(self, obj: int) -> SegmentationResult:
        return self._apply(self._call("undo", (int(obj),)))

    def redo(self, obj: int) -> SegmentationResult:
        return self._apply(self._call("redo", (int(obj),)))

    def reset(self, obj: int) -> SegmentationResult:
        return self._apply(self._call("reset", (int(obj),)))

    def ask(self, question: str, context: dict | None = None, cancel: CancelToken | None = None) -> Iterator[str]:
        """Stream the answer token by token; ``cancel`` stops the server between tokens."""
        return self._tokens("/ask", {"question": question, "context": context}, cancel)

    def report(self, cancel: CancelToken | None = None) -> Iterator[str]:
        return self._tokens("/report", {}, cancel)

    def _tokens(self, tail: str, body: dict, cancel: CancelToken | None) -> Iterator[str]:
        """Tokens arrive through a queue filled by a reader thread, so the caller iterates lazily."""
        import queue

        q: queue.Queue = queue.Queue()
        end = object()

        def reader() -> None:
            try:
                with self._lock:
                    self._check_open()
                    try:
                        self._c.stream(self._path(tail), body, lambda it: q.put(it["token"]), cancel, self.sid)
                    except SessionExpired:
                        self._reseed()
                        self._c.stream(self._path(tail), body, lambda it: q.put(it["token"]), cancel, self.sid)
                q.put(end)
            except BaseException as exc:  # handed to the iterating thread
                q.put(exc)

        def tokens() -> Iterator[str]:
            threading.Thread(target=reader, daemon=True).start()
            while True:
                item = q.get()
                if item is end:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
                if cancel is not None and cancel.cancelled:
                    cancel.raise_if_cancelled()
        return tokens()

    def close(self) -> None:
        """Close the server-side session (its memory is freed at once); a second close does nothing.

        Stops the heartbeats first; a server that is gone or already forgot the session is fine."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._beater is not None and self._beater is not threading.current_thread():
            self._beater.join(5)
        try:
            self._c.request("DELETE", self._path(""))  # repeatable: a second DELETE only finds it gone
        except (SessionExpired, ServerUnavailable):
            pass


__all__ = ["Client", "RemoteSession", "RemoteError", "SessionExpired", "ServerUnavailable", "ServerBusy", "Cancelled",
           "API_VERSION", "JSONL"]
