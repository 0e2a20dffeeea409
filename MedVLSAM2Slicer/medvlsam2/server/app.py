"""FastAPI app: bearer-token auth, request limits, sessions with leases, JSON-lines streams.

Every handler is ``async``: health, version, heartbeat and cancel answer from the event loop at once,
and model calls wait for their session's ``asyncio.Lock`` and for the model worker without holding a
thread. A call that runs past ``call_timeout_s`` is cancelled, changes nothing, and answers 504.

Logs hold counts and error codes only: never voxels, file names, prompts or patient identifiers.
"""

from __future__ import annotations

import asyncio
import logging
import os
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
from ..errors import Cancelled, MedVLSAM2Error
from ..protocol import (JSONL, MAX_JSON_BYTES, MAX_POINTS, MAX_PROMPT_CHARS, PING_S, CallTimeout, RemoteError, dumps,
                        encode_mask, encode_result, encode_text_result, error_body, excerpt, parse_json, unpack_volume, validate_box,
                        validate_context, validate_mask_prompt, validate_name, validate_points, validate_propagate,
                        validate_text, validate_timeout, validate_volume_id)
from ..utils.cancel import CancelToken
from .guards import Guard
from .worker import ModelWorker, ServerSession, SessionStore, check_object

log = logging.getLogger("medvlsam2.server")

STATUS = {"bad_input": 400, "bad_request": 400, "unknown_object": 404, "unknown_session": 404, "unknown_volume": 404,
          "not_found": 404, "too_large": 413, "cancelled": 409, "not_capable": 422, "too_many_sessions": 503,
          "busy": 429, "unauthorized": 401, "timeout": 504, "request_timeout": 408}
MAX_MESSAGE_CHARS = 400


@dataclass
class Limits:
    max_upload_bytes: int = 1 << 30
    max_voxels: int = 1024 * 1024 * 1024
    call_timeout_s: float = 600.0
    max_json_bytes: int = MAX_JSON_BYTES
    max_points: int = MAX_POINTS
    max_prompt_chars: int = MAX_PROMPT_CHARS
    max_queued_calls: int = 256  # model calls waiting or running, all sessions together (429 beyond)
    request_timeout_s: float = 30.0  # a request body may pause at most this long (408)


def _error(code: str, message: str, status: int | None = None, retry_after_s: float | None = None) -> JSONResponse:
    status = status or STATUS.get(code, 500)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS - 3] + "..."
    resp = JSONResponse(error_body(code, message), status_code=status)
    if retry_after_s is not None:
        resp.headers["retry-after"] = str(max(1, int(round(retry_after_s))))
    if status in (408, 413):
        resp.headers["connection"] = "close"  # the rest of the body is not read
    if status >= 500:
        log.warning("answered %d (%s)", status, code)
    return resp


def _exc_body(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, MedVLSAM2Error):
        return getattr(exc, "code", "error"), str(exc)
    log.error("internal error: %s", type(exc).__name__)  # the type only: messages may quote data
    return "internal", f"internal server error ({type(exc).__name__}); see the server log"


def create_app(model: Any, token: str, info: dict[str, Any], limits: Limits | None = None,
               lease_s: float = 600.0, max_sessions: int = 16, liveness_s: float | None = None) -> FastAPI:
    """The HTTP app around one loaded model. ``info`` is reported by /v1/version (model, device...)."""
    limits = limits or Limits()
    worker = ModelWorker()
    store = SessionStore(model, worker, lease_s, max_sessions, liveness_s)
    app = FastAPI(title="MedVL-SAM2 server", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store, app.state.worker = store, worker
    app.add_middleware(Guard, token=token, max_upload_bytes=limits.max_upload_bytes,
                       max_json_bytes=limits.max_json_bytes, request_timeout_s=limits.request_timeout_s)
    queued = {"calls": 0}
    tasks: set[asyncio.Task] = set()  # streams still running after their client left

    @app.exception_handler(MedVLSAM2Error)
    async def engine_error(request: Request, exc: MedVLSAM2Error):
        code, message = _exc_body(exc)
        return _error(code, message, getattr(exc, "status", 0) or None, getattr(exc, "retry_after_s", None))

    @app.exception_handler(ClientDisconnect)
    async def disconnected(request: Request, exc: ClientDisconnect):
        log.info("client disconnected before its request was complete")
        return Response(status_code=400)  # nobody reads it

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error("bad_request", f"invalid {excerpt(where)}: {excerpt(str(first.get('msg', 'bad value')))}", 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = "not_found" if exc.status_code == 404 else "bad_request"
        return _error(code, f"{excerpt(str(exc.detail))}: {request.method} {excerpt(request.url.path)} is not a route "
                            f"of API v{API_VERSION}", exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        code, message = _exc_body(exc)
        return _error(code, message, 500)

    # ----- model calls ----------------------------------------------------------------------------
    async def body_json(request: Request) -> Any:
        return parse_json(await request.body())  # Guard has bounded the body already

    def admit() -> None:
        if queued["calls"] >= limits.max_queued_calls:
            raise RemoteError(f"the server has {queued['calls']} model calls waiting; retry in a few seconds",
                              "busy", 429, retry_after_s=2)

    async def on_worker(s: ServerSession, fn: Callable[[Any, CancelToken], Any], rollback: Callable[[Any], Any] | None = None,
                        cancel: CancelToken | None = None, timeout_s: float | None = None) -> Any:
        """Run ``fn(engine, token)`` on the model worker; the caller holds ``s.lock``.

        Past ``timeout_s`` (default ``call_timeout_s``; or on a user cancel) the token is set: a queued job never starts, the
        engine stops at its next slice or token, and a job that cannot stop is taken back with
        ``rollback(engine)`` when it ends. Either way nothing is committed and the answer says so."""
        token, timed_out = cancel or CancelToken(), []

        def expire() -> None:
            timed_out.append(True)
            token.cancel()

        def job() -> Any:
            out = fn(s.engine, token)
            if token.cancelled and rollback is not None:
                rollback(s.engine)
                token.raise_if_cancelled()
            return out

        timeout_s = timeout_s or limits.call_timeout_s
        timer = asyncio.get_running_loop().call_later(timeout_s, expire)
        s.busy += 1
        if cancel is None:  # a stream sets its own token for its whole length
            s.cancel = token
        try:
            return await asyncio.wrap_future(worker.submit(job, token))
        except Cancelled:
            if timed_out:
                raise CallTimeout(f"the call took longer than its time limit of {timeout_s:g} s (the server's "
                                  "--call-timeout-s or the request's timeout_s) and was cancelled; nothing was "
                                  "changed. Use a smaller slice range, or raise the limit") from None
            raise
        finally:
            timer.cancel()
            s.busy -= 1
            if cancel is None:
                s.cancel = None
            s.touch()

    async def call(sid: str, fn: Callable[[Any, CancelToken], Any], rollback: Callable[[Any], Any] | None = None,
                   timeout_s: float | None = None) -> Any:
        """One model call of session ``sid``, after the calls of this session before it."""
        s = store.get(sid)
        admit()
        queued["calls"] += 1
        try:
            async with s.lock:
                return await on_worker(s, fn, rollback, timeout_s=timeout_s)
        finally:
            queued["calls"] -= 1

    def stream(sid: str, work: Callable[[Any, CancelToken, Callable[[dict], None]], dict] | None,
               tokens: Callable[[Any, CancelToken], Any] | None = None, timeout_s: float | None = None) -> StreamingResponse:
        """JSON lines: what ``work`` emits (progress), then its final dict or an error line, with
        ``{"alive": true}`` after every ``PING_S`` silent seconds (while queued, too).

        ``work(engine, cancel, emit)`` is one model call. For text, ``tokens(engine, cancel)`` makes a
        token iterator and each token is its own model call, so other sessions' calls run in between.
        """
        s = store.get(sid)  # unknown session -> 404 before the stream starts
        admit()
        return StreamingResponse(_lines(s, work, tokens, timeout_s), media_type=JSONL)

    async def _run_stream(s: ServerSession, work, tokens, cancel: CancelToken, put: Callable[[Any], None],
                          timeout_s: float | None) -> None:
        """The model side of a stream, a task of its own: it holds the session lock until the worker is done
        even when the client has gone (then ``cancel`` is set and the engine stops at the next slice)."""
        loop = asyncio.get_running_loop()

        def emit(item: dict) -> None:  # called on the worker thread
            loop.call_soon_threadsafe(put, item)

        queued["calls"] += 1
        try:
            async with s.lock:
                s.cancel = cancel
                if tokens is None:
                    put(await on_worker(s, lambda e, t: work(e, t, emit), cancel=cancel, timeout_s=timeout_s))
                else:
                    end = object()
                    it = await on_worker(s, lambda e, t: iter(tokens(e, t)), cancel=cancel, timeout_s=timeout_s)
                    while (token := await on_worker(s, lambda e, t: next(it, end), cancel=cancel,
                                                    timeout_s=timeout_s)) is not end:
                        put({"token": token})
                    put({"done": True})
        except BaseException as exc:  # sent to the client as the last line
            put(error_body(*_exc_body(exc)))
            if not isinstance(exc, Exception):
                raise
        finally:
            queued["calls"] -= 1
            if s.cancel is cancel:
                s.cancel = None

    async def _lines(s: ServerSession, work, tokens, timeout_s: float | None):
        q: asyncio.Queue = asyncio.Queue()
        cancel = CancelToken()
        task = asyncio.create_task(_run_stream(s, work, tokens, cancel, q.put_nowait, timeout_s))
        tasks.add(task)
        task.add_done_callback(lambda t: (tasks.discard(t), q.put_nowait(None)))
        finished = False
        try:
            while True:
                try:
                    item = await asyncio.wait_for(q.get(), PING_S)
                except asyncio.TimeoutError:
                    yield b'{"alive":true}\n'
                    continue
                if item is None:
                    break
                yield dumps(item) + b"\n"
                if "error" in item or "result" in item or "results" in item or "done" in item:
                    finished = True
                    break
        finally:
            if not finished:  # the client went away: stop the model at the next slice / token
                cancel.cancel()

    # ----- service: answered from the event loop, never behind model work ---------------------------
    @app.get("/v1/health")
    async def health() -> dict:
        return {"status": "ok", "queue": worker.pending(), "waiting_calls": queued["calls"], "rss_bytes": _rss_bytes(),
                **store.stats()}

    @app.get("/v1/version")
    async def version() -> dict:
        return {"server_version": __version__, "api_version": API_VERSION, **info, **_free_memory(info.get("device")),
                "limits": {"max_points": limits.max_points, "max_prompt_chars": limits.max_prompt_chars,
                           "max_json_bytes": limits.max_json_bytes, "max_upload_bytes": limits.max_upload_bytes,
                           "max_voxels": limits.max_voxels, "call_timeout_s": limits.call_timeout_s}}

    # ----- volumes --------------------------------------------------------------------------------
    @app.get("/v1/volumes/{volume_id}")
    async def has_volume(volume_id: str) -> dict:
        if not store.has_volume(volume_id):
            raise RemoteError("this volume is not on the server; upload it", "unknown_volume", 404)
        return {"volume_id": volume_id}

    @app.post("/v1/volumes")
    async def upload(request: Request):
        body = await request.body()  # Guard bounds it by --max-upload-mb, from Content-Length or as it arrives
        vid, array, geometry = await run_in_threadpool(unpack_volume, body, limits.max_voxels)
        del body
        await run_in_threadpool(store.put_volume, vid, array, geometry)
        log.info("volume stored (%d voxels, %s)", array.size, array.dtype)
        return {"volume_id": vid}

    # ----- sessions -------------------------------------------------------------------------------
    @app.post("/v1/sessions")
    async def open_session(request: Request) -> dict:
        from ..session import Session

        vid = validate_volume_id(await body_json(request))
        stored = store.reserve(vid)  # 404 unknown volume, 503 + Retry-After at capacity
        try:
            engine = await asyncio.wrap_future(worker.submit(lambda: Session(model, stored.volume)))
        except BaseException:
            store.release()
            raise
        s = store.add(vid, engine)
        return {"session_id": s.sid, "lease_s": store.lease_s, "liveness_s": store.liveness_s,
                "shape": list(engine.volume.shape)}

    @app.delete("/v1/sessions/{sid}")
    async def close_session(sid: str) -> dict:
        await run_in_threadpool(store.delete, sid)
        return {"closed": True}

    @app.post("/v1/sessions/{sid}/heartbeat")
    async def heartbeat(sid: str) -> dict:
        store.get(sid, call=False)  # liveness only: a session that only beats still expires after lease_s
        return {"lease_s": store.lease_s, "liveness_s": store.liveness_s}

    @app.post("/v1/sessions/{sid}/cancel")
    async def cancel(sid: str) -> dict:
        token = store.get(sid, call=False).cancel
        if token is not None:
            token.cancel()
        return {"cancelled": token is not None}

    @app.get("/v1/sessions/{sid}/objects")
    async def objects(sid: str) -> dict:
        return {"objects": {str(k): v for k, v in (await call(sid, lambda e, t: e.objects())).items()}}

    @app.post("/v1/sessions/{sid}/objects")
    async def add_object(sid: str, request: Request) -> dict:
        name = validate_name(await body_json(request))
        return {"object_id": await call(sid, lambda e, t: e.add_object(name), rollback=None)}

    @app.delete("/v1/sessions/{sid}/objects/{obj}")
    async def remove(sid: str, obj: int) -> dict:
        check_object(obj)
        await call(sid, lambda e, t: e.remove(obj))
        return {"removed": obj}

    @app.get("/v1/sessions/{sid}/objects/{obj}/mask")
    async def mask(sid: str, obj: int) -> dict:
        check_object(obj)
        return await call(sid, lambda e, t: (lambda m: {"shape": list(m.shape), "mask": encode_mask(m)})(e.mask(obj)))

    async def prompt(sid: str, obj: int, timeout_s: float, run) -> dict:
        """One prompt on one object: a single model call, taken back with ``undo`` if it finishes past its timeout."""
        check_object(obj)
        return {"result": await call(sid, lambda e, t: encode_result(run(e)), rollback=lambda e: e.undo(obj),
                                     timeout_s=timeout_s)}

    @app.post("/v1/sessions/{sid}/objects/{obj}/points")
    async def points(sid: str, obj: int, request: Request) -> dict:
        body = await body_json(request)
        pts, labels = validate_points(body, limits.max_points)
        timeout_s = validate_timeout(body, limits.call_timeout_s)
        return await prompt(sid, obj, timeout_s, lambda e: e.add_points(obj, pts, labels))

    @app.post("/v1/sessions/{sid}/objects/{obj}/box")
    async def box(sid: str, obj: int, request: Request) -> dict:
        body = await body_json(request)
        b, k = validate_box(body)
        timeout_s = validate_timeout(body, limits.call_timeout_s)
        return await prompt(sid, obj, timeout_s, lambda e: e.add_box(obj, b, k=k))

    @app.post("/v1/sessions/{sid}/objects/{obj}/mask_prompt")
    async def mask_prompt(sid: str, obj: int, request: Request) -> dict:
        body = await body_json(request)
        k, m = validate_mask_prompt(body)
        timeout_s = validate_timeout(body, limits.call_timeout_s)
        return await prompt(sid, obj, timeout_s, lambda e: e.add_mask(obj, k, m))

    @app.post("/v1/sessions/{sid}/objects/{obj}/undo")
    async def undo(sid: str, obj: int) -> dict:
        check_object(obj)
        return {"result": await call(sid, lambda e, t: encode_result(e.undo(obj)))}

    @app.post("/v1/sessions/{sid}/objects/{obj}/redo")
    async def redo(sid: str, obj: int) -> dict:
        check_object(obj)
        return {"result": await call(sid, lambda e, t: encode_result(e.redo(obj)))}

    @app.post("/v1/sessions/{sid}/objects/{obj}/reset")
    async def reset(sid: str, obj: int) -> dict:
        check_object(obj)
        return {"result": await call(sid, lambda e, t: encode_result(e.reset(obj)))}

    @app.post("/v1/sessions/{sid}/objects/{obj}/propagate")
    async def propagate(sid: str, obj: int, request: Request):
        body = await body_json(request)
        k_range, direction = validate_propagate(body)
        timeout_s = validate_timeout(body, limits.call_timeout_s)
        check_object(obj)

        def work(engine, cancel, emit):
            r = engine.propagate(obj, k_range, direction, cancel=cancel, progress=lambda d, n: emit({"progress": [d, n]}))
            return {"result": encode_result(r)}
        return stream(sid, work, timeout_s=timeout_s)

    @app.post("/v1/sessions/{sid}/text")
    async def segment_text(sid: str, request: Request):
        body = await body_json(request)
        prompt = validate_text(body, "prompt", limits.max_prompt_chars)
        timeout_s = validate_timeout(body, limits.call_timeout_s)

        def work(engine, cancel, emit):
            return encode_text_result(engine.segment_text(prompt, cancel=cancel,
                                                          progress=lambda d, n: emit({"progress": [d, n]})))
        return stream(sid, work, timeout_s=timeout_s)

    @app.post("/v1/sessions/{sid}/ask")
    async def ask(sid: str, request: Request):
        body = await body_json(request)
        question = validate_text(body, "question", limits.max_prompt_chars)
        context = validate_context(body.get("context"))
        return stream(sid, None, lambda engine, cancel: engine.ask(question, context, cancel=cancel),
                      validate_timeout(body, limits.call_timeout_s))

    @app.post("/v1/sessions/{sid}/report")
    async def report(sid: str):
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
