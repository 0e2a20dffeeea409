"""FastAPI app: bearer-token auth, upload limits, sessions with leases, JSON-lines streams.

Logs hold counts and error codes only: never voxels, file names, prompts or patient identifiers.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import API_VERSION, __version__
from ..errors import MedVLSAM2Error
from ..protocol import (JSONL, PayloadTooLarge, RemoteError, dumps, encode_mask, encode_result, error_body, parse_json,
                        unpack_volume, validate_box, validate_context, validate_points, validate_propagate,
                        validate_text)
from ..utils.cancel import CancelToken
from .worker import ModelWorker, ServerSession, SessionStore, check_object

log = logging.getLogger("medvlsam2.server")

STATUS = {"bad_input": 400, "bad_request": 400, "unknown_object": 404, "unknown_session": 404, "unknown_volume": 404,
          "not_found": 404, "too_large": 413, "cancelled": 409, "not_capable": 422, "too_many_sessions": 503, "unauthorized": 401}


@dataclass
class Limits:
    max_upload_bytes: int = 1 << 30
    max_voxels: int = 1024 * 1024 * 1024
    call_timeout_s: float = 600.0


def _error(code: str, message: str, status: int | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status or STATUS.get(code, 500))


def _exc_body(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, MedVLSAM2Error):
        return getattr(exc, "code", "error"), str(exc)
    log.error("internal error: %s", type(exc).__name__)  # the type only: messages may quote data
    return "internal", f"internal server error ({type(exc).__name__}: {exc}); see the server log"


def create_app(model: Any, token: str, info: dict[str, Any], limits: Limits | None = None,
               lease_s: float = 600.0, max_sessions: int = 16) -> FastAPI:
    """The HTTP app around one loaded model. ``info`` is reported by /v1/version (model, device...)."""
    limits = limits or Limits()
    worker = ModelWorker()
    store = SessionStore(model, worker, lease_s, max_sessions)
    app = FastAPI(title="MedVL-SAM2 server", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store, app.state.worker = store, worker
    expected = f"Bearer {token}".encode()

    @app.middleware("http")
    async def auth(request: Request, call_next):
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return _error("unauthorized", "missing or wrong bearer token; send 'Authorization: Bearer <token>' with "
                                          "the token the server was started with", 401)
        return await call_next(request)

    @app.exception_handler(MedVLSAM2Error)
    async def engine_error(request: Request, exc: MedVLSAM2Error):
        code, message = _exc_body(exc)
        return _error(code, message, getattr(exc, "status", 0) or None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error("bad_request", f"invalid {where}: {first.get('msg', 'bad value')}", 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = "not_found" if exc.status_code == 404 else "bad_request"
        return _error(code, f"{exc.detail}: {request.method} {request.url.path} is not a route of API v{API_VERSION}",
                      exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        code, message = _exc_body(exc)
        return _error(code, message, 500)

    # ----- helpers --------------------------------------------------------------------------------
    async def body_json(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > 1 << 20:
            raise PayloadTooLarge("JSON requests are limited to 1 MiB; prompts should be small")
        return parse_json(raw)

    def call(sid: str, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(engine)`` on the model worker, one request of this session at a time."""
        s = store.get(sid)
        with s.lock:
            s.busy += 1
            try:
                return worker.run(lambda: fn(s.engine), limits.call_timeout_s)
            finally:
                s.busy -= 1
                s.last_seen = time.monotonic()

    def on_worker(fn: Callable[[], Any]) -> Any:
        return worker.run(fn, limits.call_timeout_s)

    def stream(sid: str, work: Callable[[Any, CancelToken, Callable[[dict], None]], dict],
               tokens: Callable[[Any, CancelToken], Any] | None = None) -> StreamingResponse:
        """JSON lines: what ``work`` emits (progress), then its final dict or an error line.

        ``work(engine, cancel, emit)`` is one model call. For text, ``tokens(engine, cancel)`` makes a
        token iterator and each token is its own model call, so other sessions' calls run in between.
        """
        s = store.get(sid)  # unknown session -> 404 before the stream starts
        return StreamingResponse(_lines(s, work, tokens), media_type=JSONL)

    async def _lines(s: ServerSession, work, tokens):
        """The job runs in its own pump thread (holding the session lock only while it runs), so a client
        that disconnects can never leave the session locked; lines reach this generator by an asyncio queue."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        cancel, done = CancelToken(), object()

        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(q.put_nowait, item)
            except RuntimeError:  # the event loop is gone (server shutting down)
                pass

        def pump() -> None:
            with s.lock:
                s.busy += 1
                s.cancel = cancel
                try:
                    if tokens is None:
                        put(on_worker(lambda: work(s.engine, cancel, put)))
                    else:
                        end = object()
                        it = on_worker(lambda: iter(tokens(s.engine, cancel)))
                        while (token := on_worker(lambda: next(it, end))) is not end:
                            put({"token": token})
                            cancel.raise_if_cancelled()
                        put({"done": True})
                except BaseException as exc:  # sent to the client as the last line
                    put(error_body(*_exc_body(exc)))
                finally:
                    s.busy -= 1
                    s.cancel = None
                    s.last_seen = time.monotonic()
                    put(done)

        threading.Thread(target=pump, name="medvlsam2-stream", daemon=True).start()
        finished = False
        try:
            while (item := await q.get()) is not done:
                yield dumps(item) + b"\n"
            finished = True
        finally:
            if not finished:  # the client went away: stop the model at the next slice / token
                cancel.cancel()

    # ----- service --------------------------------------------------------------------------------
    @app.get("/v1/health")
    def health() -> dict:
        return {"status": "ok", "queue": worker.pending(), "rss_bytes": _rss_bytes(), **store.stats()}

    @app.get("/v1/version")
    def version() -> dict:
        return {"server_version": __version__, "api_version": API_VERSION, **info, **_free_memory(info.get("device"))}

    # ----- volumes --------------------------------------------------------------------------------
    @app.get("/v1/volumes/{volume_id}")
    def has_volume(volume_id: str) -> dict:
        if not store.has_volume(volume_id):
            raise RemoteError("this volume is not on the server; upload it", "unknown_volume", 404)
        return {"volume_id": volume_id}

    @app.post("/v1/volumes")
    async def upload(request: Request):
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return _error("bad_request", "Content-Length must be a non-negative integer")
            if int(length) > limits.max_upload_bytes:  # refuse before reading a byte of the body
                return _too_large(int(length))
        parts, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_upload_bytes:
                    return _too_large(size)
                parts.append(chunk)
        except ClientDisconnect:
            log.info("upload aborted by the client")
            return Response(status_code=400)
        body = b"".join(parts)
        del parts
        vid, array, geometry = await run_in_threadpool(unpack_volume, body, limits.max_voxels)
        await run_in_threadpool(store.put_volume, vid, array, geometry)
        log.info("volume stored (%d voxels, %s)", array.size, array.dtype)
        return {"volume_id": vid}

    def _too_large(size: int) -> JSONResponse:
        resp = _error("too_large", f"the upload has {size} bytes, more than this server's limit of "
                                   f"{limits.max_upload_bytes}; crop the volume or raise --max-upload-mb", 413)
        resp.headers["connection"] = "close"
        return resp

    # ----- sessions -------------------------------------------------------------------------------
    @app.post("/v1/sessions")
    async def open_session(request: Request) -> dict:
        body = await body_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("volume_id"), str):
            raise RemoteError('send {"volume_id": "<id from POST /v1/volumes>"}', "bad_request", 400)
        s = await run_in_threadpool(store.create, body["volume_id"])
        return {"session_id": s.sid, "lease_s": store.lease_s, "shape": list(s.engine.volume.shape)}

    @app.delete("/v1/sessions/{sid}")
    def close_session(sid: str) -> dict:
        store.delete(sid)
        return {"closed": True}

    @app.post("/v1/sessions/{sid}/heartbeat")
    def heartbeat(sid: str) -> dict:
        store.get(sid)
        return {"lease_s": store.lease_s}

    @app.post("/v1/sessions/{sid}/cancel")
    def cancel(sid: str) -> dict:
        s = store.get(sid)
        token = s.cancel
        if token is not None:
            token.cancel()
        return {"cancelled": token is not None}

    @app.get("/v1/sessions/{sid}/objects")
    def objects(sid: str) -> dict:
        return {"objects": {str(k): v for k, v in call(sid, lambda e: e.objects()).items()}}

    @app.post("/v1/sessions/{sid}/objects")
    async def add_object(sid: str, request: Request) -> dict:
        body = await body_json(request) or {}
        name = body.get("name") if isinstance(body, dict) else None
        if name is not None and (not isinstance(name, str) or len(name) > 200):
            raise RemoteError("name must be text of at most 200 characters", "bad_input", 400)
        return {"object_id": await run_in_threadpool(call, sid, lambda e: e.add_object(name))}

    @app.delete("/v1/sessions/{sid}/objects/{obj}")
    def remove(sid: str, obj: int) -> dict:
        call(sid, lambda e: e.remove(check_object(obj)))
        return {"removed": obj}

    @app.get("/v1/sessions/{sid}/objects/{obj}/mask")
    def mask(sid: str, obj: int) -> dict:
        m = call(sid, lambda e: e.mask(check_object(obj)))
        return {"shape": list(m.shape), "mask": encode_mask(m)}

    @app.post("/v1/sessions/{sid}/objects/{obj}/points")
    async def points(sid: str, obj: int, request: Request) -> dict:
        pts, labels = validate_points(await body_json(request))
        r = await run_in_threadpool(call, sid, lambda e: e.add_points(check_object(obj), pts, labels))
        return {"result": encode_result(r)}

    @app.post("/v1/sessions/{sid}/objects/{obj}/box")
    async def box(sid: str, obj: int, request: Request) -> dict:
        b, k = validate_box(await body_json(request))
        r = await run_in_threadpool(call, sid, lambda e: e.add_box(check_object(obj), b, k=k))
        return {"result": encode_result(r)}

    @app.post("/v1/sessions/{sid}/objects/{obj}/undo")
    def undo(sid: str, obj: int) -> dict:
        return {"result": encode_result(call(sid, lambda e: e.undo(check_object(obj))))}

    @app.post("/v1/sessions/{sid}/objects/{obj}/reset")
    def reset(sid: str, obj: int) -> dict:
        return {"result": encode_result(call(sid, lambda e: e.reset(check_object(obj))))}

    @app.post("/v1/sessions/{sid}/objects/{obj}/propagate")
    async def propagate(sid: str, obj: int, request: Request):
        k_range, direction = validate_propagate(await body_json(request))
        check_object(obj)

        def work(engine, cancel, emit):
            r = engine.propagate(obj, k_range, direction, cancel=cancel, progress=lambda d, n: emit({"progress": [d, n]}))
            return {"result": encode_result(r)}
        return stream(sid, work)

    @app.post("/v1/sessions/{sid}/text")
    async def segment_text(sid: str, request: Request):
        prompt = validate_text(await body_json(request), "prompt")

        def work(engine, cancel, emit):
            rs = engine.segment_text(prompt, cancel=cancel, progress=lambda d, n: emit({"progress": [d, n]}))
            return {"results": [encode_result(r) for r in rs]}
        return stream(sid, work)

    @app.post("/v1/sessions/{sid}/ask")
    async def ask(sid: str, request: Request):
        body = await body_json(request)
        question = validate_text(body, "question")
        context = validate_context(body.get("context"))

        return stream(sid, None, lambda engine, cancel: engine.ask(question, context, cancel=cancel))

    @app.post("/v1/sessions/{sid}/report")
    def report(sid: str):
        return stream(sid, None, lambda engine, cancel: engine.report(cancel=cancel))

    return app


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return -1


def _free_memory(device: str | None) -> dict[str, Any]:
    """Free memory of the model's device (GPU via torch when it is CUDA, else system RAM)."""
    try:
        if device and device.startswith("cuda"):
            import torch

            free, total = torch.cuda.mem_get_info(torch.device(device))
        else:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return {"free_memory_bytes": int(free), "memory_gb": round(total / 2**30, 1)}
    except Exception:  # not every platform can tell
        return {"free_memory_bytes": None, "memory_gb": None}
