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
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import API_VERSION, __version__
from ..errors import MedVLSAM2Error
from ..protocol import (MAX_JSON_BYTES, MAX_POINTS, MAX_PROMPT_CHARS, RemoteError, error_body, excerpt, parse_json,
                        unpack_volume, validate_volume_id)
from .dispatch import Dispatcher
from .guards import Guard
from .routes import register_operations
from .worker import ModelThread, SessionStore

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
    worker = ModelThread()
    store = SessionStore(model, worker, lease_s, max_sessions, liveness_s)
    app = FastAPI(title="MedVL-SAM2 server", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store, app.state.worker = store, worker
    app.add_middleware(Guard, token=token, max_upload_bytes=limits.max_upload_bytes,
                       max_json_bytes=limits.max_json_bytes, request_timeout_s=limits.request_timeout_s)

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

    dispatch = Dispatcher(store, worker, limits, _exc_body)
    register_operations(app, dispatch)

    # ----- service: answered from the event loop, never behind model work ---------------------------
    @app.get("/v1/health")
    async def health() -> dict:
        return {"status": "ok", "queue": worker.pending(), "waiting_calls": dispatch.queued, "rss_bytes": _rss_bytes(),
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

        vid = validate_volume_id(parse_json(await request.body()))  # Guard has bounded the body
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
