"""What stands in front of the routes: token check, body limits and request timeouts (one ASGI
middleware), a connection-level timeout for request heads that never complete, and log records
stripped of tracebacks (they can quote request content).

The middleware refuses a body from its ``Content-Length`` before reading a byte of it, and counts the
bytes of a chunked body as they arrive, so no route ever holds more than its limit in memory.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any, Awaitable, Callable

from ..errors import MedVLSAM2Error
from ..protocol import PayloadTooLarge, dumps, error_body

log = logging.getLogger("medvlsam2.server")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class RequestTimeout(MedVLSAM2Error):
    code = "request_timeout"
    status = 408


class Guard:
    """ASGI middleware: bearer token, then body size and body idle time for every HTTP request.

    ``upload_routes`` (method, path) take up to ``max_upload_bytes``; every other route takes at most
    ``max_json_bytes``. A body that pauses longer than ``request_timeout_s`` is answered 408.
    """

    def __init__(self, app, token: str, max_upload_bytes: int, max_json_bytes: int, request_timeout_s: float,
                 upload_routes: frozenset[tuple[str, str]] = frozenset({("POST", "/v1/volumes")})) -> None:
        self.app, self._expected = app, f"Bearer {token}".encode()
        self.max_upload, self.max_json, self.timeout = max_upload_bytes, max_json_bytes, request_timeout_s
        self.upload_routes = upload_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])  # lower-case names (ASGI)
        if not hmac.compare_digest(headers.get(b"authorization", b""), self._expected):
            return await _answer(send, 401, "unauthorized", "missing or wrong bearer token; send 'Authorization: "
                                                           "Bearer <token>' with the token the server was started with")
        limit = self.max_upload if (scope["method"], scope["path"]) in self.upload_routes else self.max_json
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or len(length) > 18:
                return await _answer(send, 400, "bad_request", "Content-Length must be a non-negative integer")
            if int(length) > limit:  # refused before a byte of the body is read
                return await _answer(send, 413, "too_large", _too_large(int(length), limit), close=True)
        await self.app(scope, self._limited(receive, limit), send)

    def _limited(self, receive: Receive, limit: int) -> Receive:
        """``receive`` that counts body bytes and times out a body that stalls (not the wait for a disconnect
        once the body is complete: a streaming answer legitimately waits for that)."""
        state = {"size": 0, "more": True}

        async def limited() -> dict:
            if not state["more"]:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except asyncio.TimeoutError:
                raise RequestTimeout(f"the request body stalled for more than {self.timeout:g} s; send it again") from None
            if message["type"] == "http.request":
                state["size"] += len(message.get("body", b""))
                state["more"] = bool(message.get("more_body", False))
                if state["size"] > limit:
                    raise PayloadTooLarge(_too_large(state["size"], limit))
            else:
                state["more"] = False
            return message
        return limited


def _too_large(size: int, limit: int) -> str:
    return (f"the request body has {size} bytes or more, more than this route's limit of {limit}; "
            "crop the volume or shorten the request, or raise --max-upload-mb / --max-json-kb on the server")


async def _answer(send: Send, status: int, code: str, message: str, close: bool = False) -> None:
    body = dumps(error_body(code, message))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def timed_h11_protocol(head_timeout_s: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose next request head is not complete within
    ``head_timeout_s`` (uvicorn times out idle keep-alive connections, not a head sent byte by byte)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _waiting_cycle: Any = None

        def _arm(self) -> None:
            self._disarm()
            self._waiting_cycle = self.cycle
            self._head_timer = self.loop.call_later(head_timeout_s, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.cycle is self._waiting_cycle and not self.transport.is_closing():
                log.info("closed a connection whose request head did not arrive within %g s", head_timeout_s)
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self._head_timer is not None and self.cycle is not self._waiting_cycle:
                self._disarm()  # a complete head arrived: the body has its own timeout (Guard)

        def on_response_complete(self) -> None:
            self._arm()  # before super(): it may parse a pipelined request at once
            super().on_response_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return TimedH11Protocol


class CountsOnly(logging.Filter):
    """Drops tracebacks and exception text (they can quote voxels, prompts or paths): the type stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            exc = record.exc_info[1]
            record.msg, record.args = f"{record.getMessage()} [{type(exc).__name__}]", ()
            record.exc_info = record.exc_text = None
            record.stack_info = None
        return True


def quiet_loggers() -> None:
    """Install ``CountsOnly`` on the loggers that uvicorn, asyncio and this server write to."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi", "asyncio", "medvlsam2.server"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, CountsOnly) for f in logger.filters):
            logger.addFilter(CountsOnly())


def uvicorn_config(app, request_timeout_s: float, **kwargs):
    """The uvicorn settings of ``medvlsam2 serve``: h11 with a head timeout, keep-alive timeout, a bounded
    head size, a cap on open connections, no access log, and log records without tracebacks."""
    import uvicorn

    config = uvicorn.Config(app, http=timed_h11_protocol(request_timeout_s), log_level="warning", access_log=False,
                            timeout_keep_alive=int(max(1, min(30, request_timeout_s))),
                            h11_max_incomplete_event_size=16384, limit_concurrency=512, timeout_graceful_shutdown=3,
                            **kwargs)
    quiet_loggers()  # after Config, which (re)configures uvicorn's loggers
    return config
