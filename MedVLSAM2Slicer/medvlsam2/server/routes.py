"""The session's operations as HTTP routes: one route per entry of ``medvlsam2.api.OPERATIONS``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

from ..api import CALL, OPERATIONS, PROMPT, STREAM, TOKENS, Operation
from ..protocol import RemoteError, excerpt, parse_json, validate_timeout
from .dispatch import Dispatcher
from .worker import check_object

SESSION = "/v1/sessions/{sid}"


def register_operations(app: FastAPI, dispatch: Dispatcher) -> None:
    for op in OPERATIONS.values():
        app.add_api_route(SESSION + op.path, _handler(op, dispatch), methods=[op.http], name=op.name)


def _object(request: Request) -> int:
    raw = request.path_params["obj"]
    try:
        obj = int(raw)
    except ValueError:
        raise RemoteError(f"invalid path.obj: {excerpt(raw)} is not an integer object id", "bad_request", 422) from None
    return obj


def _handler(op: Operation, dispatch: Dispatcher):
    limits = dispatch.limits

    async def handler(request: Request) -> Any:
        sid = request.path_params["sid"]
        obj = _object(request) if op.takes_object else None
        body = parse_json(await request.body()) if op.http == "POST" else None  # Guard has bounded the body
        kwargs = op.parse(body, limits)
        timeout_s = validate_timeout(body, limits.call_timeout_s)
        args = () if obj is None else (check_object(obj),)
        method = op.name
        if op.kind in (CALL, PROMPT):
            rollback = (lambda e: e.undo(obj)) if op.kind == PROMPT else None
            return await dispatch.call(sid, lambda e, t: op.reply(getattr(e, method)(*args, **kwargs)), rollback,
                                       timeout_s=timeout_s)
        if op.kind == STREAM:
            def work(engine, cancel, emit):
                out = getattr(engine, method)(*args, **kwargs, cancel=cancel,
                                              progress=lambda d, n: emit({"progress": [d, n]}))
                return op.reply(out)
            return dispatch.stream(sid, work, timeout_s=timeout_s)
        assert op.kind == TOKENS, op.kind
        return dispatch.stream(sid, None, lambda engine, cancel: getattr(engine, method)(*args, **kwargs, cancel=cancel),
                               timeout_s)

    handler.__name__ = op.name
    return handler
