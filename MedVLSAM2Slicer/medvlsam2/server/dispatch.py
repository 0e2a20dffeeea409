"""How the server runs a session's calls: one at a time per session, on the one model worker, with deadlines,
cancel and JSON-lines streams that ping while they wait. The routes (``app``, ``routes``) only parse and
encode."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from fastapi.responses import StreamingResponse

from ..errors import Cancelled
from ..protocol import JSONL, PING_S, CallTimeout, RemoteError, dumps, error_body
from ..utils.cancel import CancelToken
from .worker import ModelThread, ServerSession, SessionStore

Work = Callable[[Any, CancelToken, Callable[[dict], None]], dict]  # (engine, cancel, emit) -> final line
Tokens = Callable[[Any, CancelToken], Any]  # (engine, cancel) -> token iterator


class Dispatcher:
    def __init__(self, store: SessionStore, worker: ModelThread, limits, error_of: Callable[[BaseException], tuple[str, str]]
                 ) -> None:
        self.store, self.worker, self.limits, self.error_of = store, worker, limits, error_of
        self.queued = 0  # model calls waiting or running, all sessions together
        self.tasks: set[asyncio.Task] = set()  # streams still running after their client left

    def admit(self) -> None:
        if self.queued >= self.limits.max_queued_calls:
            raise RemoteError(f"the server has {self.queued} model calls waiting; retry in a few seconds",
                              "busy", 429, retry_after_s=2)

    async def on_worker(self, s: ServerSession, fn: Callable[[Any, CancelToken], Any],
                        rollback: Callable[[Any], Any] | None = None, cancel: CancelToken | None = None,
                        timeout_s: float | None = None) -> Any:
        """Run ``fn(engine, token)`` on the model worker; the caller holds ``s.lock``.

        Past ``timeout_s`` (default ``call_timeout_s``; or on a user cancel) the token is set: a queued job never
        starts, the engine stops at its next slice or token, and a job that cannot stop is taken back with
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

        timeout_s = timeout_s or self.limits.call_timeout_s
        timer = asyncio.get_running_loop().call_later(timeout_s, expire)
        s.busy += 1
        if cancel is None:  # a stream sets its own token for its whole length
            s.cancel = token
        try:
            return await asyncio.wrap_future(self.worker.submit(job, token))
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

    async def call(self, sid: str, fn: Callable[[Any, CancelToken], Any], rollback: Callable[[Any], Any] | None = None,
                   timeout_s: float | None = None) -> Any:
        """One model call of session ``sid``, after the calls of this session before it."""
        s = self.store.get(sid)
        self.admit()
        self.queued += 1
        try:
            async with s.lock:
                return await self.on_worker(s, fn, rollback, timeout_s=timeout_s)
        finally:
            self.queued -= 1

    def stream(self, sid: str, work: Work | None, tokens: Tokens | None = None,
               timeout_s: float | None = None) -> StreamingResponse:
        """JSON lines: what ``work`` emits (progress), then its final dict or an error line, with
        ``{"alive": true}`` after every ``PING_S`` silent seconds (while queued, too).

        ``work(engine, cancel, emit)`` is one model call. For text, ``tokens(engine, cancel)`` makes a
        token iterator and each token is its own model call, so other sessions' calls run in between.
        """
        s = self.store.get(sid)  # unknown session -> 404 before the stream starts
        self.admit()
        return StreamingResponse(self._lines(s, work, tokens, timeout_s), media_type=JSONL)

    async def _run_stream(self, s: ServerSession, work: Work | None, tokens: Tokens | None, cancel: CancelToken,
                          put: Callable[[Any], None], timeout_s: float | None) -> None:
        """The model side of a stream, a task of its own: it holds the session lock until the worker is done
        even when the client has gone (then ``cancel`` is set and the engine stops at the next slice)."""
        loop = asyncio.get_running_loop()

        def emit(item: dict) -> None:  # called on the worker thread
            loop.call_soon_threadsafe(put, item)

        self.queued += 1
        try:
            async with s.lock:
                s.cancel = cancel
                if tokens is None:
                    put(await self.on_worker(s, lambda e, t: work(e, t, emit), cancel=cancel, timeout_s=timeout_s))
                else:
                    end = object()
                    it = await self.on_worker(s, lambda e, t: iter(tokens(e, t)), cancel=cancel, timeout_s=timeout_s)
                    while (token := await self.on_worker(s, lambda e, t: next(it, end), cancel=cancel,
                                                         timeout_s=timeout_s)) is not end:
                        put({"token": token})
                    put({"done": True})
        except BaseException as exc:  # sent to the client as the last line
            put(error_body(*self.error_of(exc)))
            if not isinstance(exc, Exception):
                raise
        finally:
            self.queued -= 1
            if s.cancel is cancel:
                s.cancel = None

    async def _lines(self, s: ServerSession, work: Work | None, tokens: Tokens | None, timeout_s: float | None):
        q: asyncio.Queue = asyncio.Queue()
        cancel = CancelToken()
        task = asyncio.create_task(self._run_stream(s, work, tokens, cancel, q.put_nowait, timeout_s))
        self.tasks.add(task)
        task.add_done_callback(lambda t: (self.tasks.discard(t), q.put_nowait(None)))
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
