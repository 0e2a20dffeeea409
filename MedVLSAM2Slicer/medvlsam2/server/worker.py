"""The one long-lived model worker, the volume store and session leases.

All model work runs on a single thread, one call at a time, in arrival order: the model's SAM2 predictor
(and its prompt-token hook) is shared by every session, so calls must not interleave. A second client
therefore waits at most for the call in progress (plus calls queued before it), never for a whole
session. Requests of one session are additionally serialised by a per-session ``asyncio.Lock`` (waiting
for it holds no thread), so a session's state is never touched by two requests at once.

A session has two clocks: ``last_call`` (refreshed by real calls only; ``idle_s``) and ``last_beat``
(refreshed by heartbeats and calls; ``liveness_s``). A client that crashed stops beating and is closed
after ``liveness_s``; a client that only beats (a forgotten session) is closed after ``idle_s``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import queue
import secrets
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import InputError
from ..protocol import RemoteError
from ..utils.cancel import CancelToken

log = logging.getLogger("medvlsam2.server")


class ModelThread:
    """Runs submitted callables on one thread, first come first served (the server's; the Slicer panel's job
    runner is ``MedVLSAM2SlicerLib.worker.ModelWorker``)."""

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="medvlsam2-model-worker", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any], cancel: CancelToken | None = None) -> Future:
        """Queue ``fn``; a job whose ``cancel`` is set before it starts is never run (it raises Cancelled)."""
        fut: Future = Future()
        self._jobs.put((fn, fut, cancel))
        return fut

    def pending(self) -> int:
        return self._jobs.qsize()

    def _loop(self) -> None:
        while True:
            fn, fut, cancel = self._jobs.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                if cancel is not None:
                    cancel.raise_if_cancelled()  # cancelled or timed out while queued: nothing starts
                fut.set_result(fn())
            except BaseException as exc:  # the caller re-raises it
                fut.set_exception(exc)
            del fn, fut, cancel  # keep no closed session alive while waiting for the next job


@dataclass
class StoredVolume:
    volume: Any  # medvlsam2.io.volume.Volume
    nbytes: int
    last_used: float = field(default_factory=time.monotonic)


@dataclass
class ServerSession:
    sid: str
    volume_id: str
    engine: Any  # medvlsam2.session.Session
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_call: float = field(default_factory=time.monotonic)
    last_beat: float = field(default_factory=time.monotonic)
    busy: int = 0
    cancel: CancelToken | None = None

    def nbytes(self) -> int:
        """Bytes this session holds beyond the shared volume: masks, history and SAM2 frames (a best
        effort read from another thread: the worker may be changing them)."""
        held = getattr(self.engine, "held_bytes", None)
        if callable(held):
            return int(held())
        total = 0
        try:
            for o in list(getattr(self.engine, "_objects", {}).values()):
                total += o.mask.nbytes + sum(getattr(h, "nbytes", 0) or getattr(h[0], "nbytes", 0) for h in list(o.history))
        except (RuntimeError, TypeError, IndexError, AttributeError):
            pass
        frames = getattr(self.engine, "frames", None)
        return total + (int(frames.numel() * frames.element_size()) if frames is not None else 0)

    def touch(self, call: bool = True) -> None:
        now = time.monotonic()
        self.last_beat = now
        if call:
            self.last_call = now


class SessionStore:
    """Volumes by content hash, sessions by random id, idle leases enforced by a reaper thread."""

    def __init__(self, model: Any, worker: ModelThread, lease_s: float, max_sessions: int,
                 liveness_s: float | None = None) -> None:
        self.model, self.worker = model, worker
        self.lease_s, self.max_sessions = lease_s, max_sessions  # lease_s: the idle timeout
        self.liveness_s = min(lease_s, 60.0) if liveness_s is None else liveness_s
        self.volumes: dict[str, StoredVolume] = {}
        self.sessions: dict[str, ServerSession] = {}
        self.expired = 0
        self._opening = 0  # sessions reserved while their engine is being built
        self._engines: weakref.WeakSet = weakref.WeakSet()  # to measure that expiry really frees sessions
        self._lock = threading.Lock()
        threading.Thread(target=self._reap_loop, name="medvlsam2-lease-reaper", daemon=True).start()

    # ----- volumes ------------------------------------------------------------------------------
    def put_volume(self, vid: str, array: np.ndarray, geometry: dict) -> None:
        from ..io.volume import Volume

        volume = Volume(array, geometry["spacing"], geometry["origin"], np.reshape(geometry["direction"], (3, 3)))
        with self._lock:
            self.volumes.setdefault(vid, StoredVolume(volume, array.nbytes))

    def has_volume(self, vid: str) -> bool:
        with self._lock:
            v = self.volumes.get(vid)
            if v is not None:
                v.last_used = time.monotonic()
            return v is not None

    # ----- sessions -----------------------------------------------------------------------------
    def reserve(self, vid: str) -> StoredVolume:
        """Claim a session slot for ``vid`` (``release`` or ``add`` it); 503 + retry hint at capacity."""
        with self._lock:
            stored = self.volumes.get(vid)
            if stored is None:
                raise RemoteError(f"volume {vid[:12]}... is not on this server; upload it first", "unknown_volume", 404)
            if len(self.sessions) + self._opening >= self.max_sessions:
                raise RemoteError(f"this server already holds its limit of {self.max_sessions} sessions; close one "
                                  "(a session is closed when its volume is switched or the panel closes) or raise "
                                  f"--max-sessions; retry in {self._retry_after():.0f} s", "too_many_sessions", 503,
                                  retry_after_s=self._retry_after())
            self._opening += 1
            stored.last_used = time.monotonic()
            return stored

    def release(self) -> None:
        with self._lock:
            self._opening -= 1

    def add(self, vid: str, engine: Any) -> ServerSession:
        s = ServerSession(secrets.token_urlsafe(16), vid, engine)
        with self._lock:
            self._opening -= 1
            self.sessions[s.sid] = s
            self._engines.add(engine)
        log.info("session opened (%d open)", len(self.sessions))
        return s

    def _retry_after(self) -> float:
        """Seconds until the first idle session would expire (at least 1); called with the lock held."""
        now = time.monotonic()
        left = [min(self.lease_s - (now - s.last_call), self.liveness_s - (now - s.last_beat))
                for s in self.sessions.values() if not s.busy]
        return float(max(1, math.ceil(min(left)))) if left else float(max(1, math.ceil(min(self.liveness_s, 30))))

    def get(self, sid: str, call: bool = True) -> ServerSession:
        """The session; ``call`` refreshes its idle clock too (a heartbeat refreshes liveness only)."""
        with self._lock:
            s = self.sessions.get(sid)
            if s is None:
                raise RemoteError("unknown session: it expired (idle longer than the lease, or its client stopped "
                                  "sending heartbeats) or the server restarted; open a new session (the client "
                                  "does this by itself)", "unknown_session", 404)
            s.touch(call)
            return s

    def delete(self, sid: str) -> None:
        with self._lock:
            s = self.sessions.pop(sid, None)
        if s is None:
            self.get(sid)  # raises unknown_session
        if s.cancel is not None:
            s.cancel.cancel()
        self._drop_unused_volumes()
        gc.collect()  # SAM2 states hold reference cycles; free them now rather than at some later collection
        log.info("session closed (%d open)", len(self.sessions))

    def _drop_unused_volumes(self) -> None:
        with self._lock:
            used = {s.volume_id for s in self.sessions.values()}
            now = time.monotonic()
            for vid in [v for v, sv in self.volumes.items() if v not in used and now - sv.last_used > min(self.lease_s, 60)]:
                del self.volumes[vid]

    def reap(self) -> int:
        """Close sessions without a call for ``lease_s`` or without a heartbeat for ``liveness_s`` (never one
        with a call in progress or waiting)."""
        now = time.monotonic()
        with self._lock:
            stale = [sid for sid, s in self.sessions.items() if not s.busy and not s.lock.locked()
                     and (now - s.last_call > self.lease_s or now - s.last_beat > self.liveness_s)]
            for sid in stale:
                del self.sessions[sid]
            self.expired += len(stale)
        # Unused volumes go after one lease too, so a reconnecting client can skip the upload for a while.
        with self._lock:
            used = {s.volume_id for s in self.sessions.values()}
            for vid in [v for v, sv in self.volumes.items() if v not in used and now - sv.last_used > self.lease_s]:
                del self.volumes[vid]
        if stale:
            gc.collect()
            log.info("%d idle session(s) expired (%d open)", len(stale), len(self.sessions))
        return len(stale)

    def _reap_loop(self) -> None:
        while True:
            time.sleep(min(1.0, max(0.05, min(self.lease_s, self.liveness_s) / 4)))
            try:
                self.reap()
            except Exception:  # never let the reaper die
                log.exception("lease reaper failed")

    def stats(self) -> dict[str, int]:
        """Counts and bytes held (no gc here: a full collection costs ~0.4 s in a torch process)."""
        with self._lock:
            held = sum(v.nbytes for v in self.volumes.values()) + sum(s.nbytes() for s in self.sessions.values())
            return {"sessions": len(self.sessions), "opening": self._opening, "volumes": len(self.volumes),
                    "held_bytes": int(held),
                    "live_engine_sessions": len(self._engines), "expired_sessions": self.expired}


def check_object(obj: int) -> int:
    if obj < 1:
        raise InputError(f"object ids start at 1, got {obj}")
    return obj
