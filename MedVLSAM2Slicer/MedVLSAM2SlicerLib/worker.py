"""One long-lived background thread for every model call; results come back to the main thread.

The worker thread never touches MRML or Qt: callbacks are queued and run by ``deliver()``, which the
widget calls from a QTimer on the main thread (tests call it directly).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from medvlsam2.utils.cancel import CancelToken

Callback = Callable[..., None]


@dataclass
class Job:
    """A model call: ``run(job)`` executes on the worker thread and may call ``emit``/``progress``."""

    name: str
    run: Callable[["Job"], Any]
    on_done: Callback | None = None
    on_error: Callback | None = None
    on_partial: Callback | None = None
    on_progress: Callback | None = None
    cancel: CancelToken = field(default_factory=CancelToken)
    _outbox: "queue.Queue | None" = None

    def emit(self, item: Any) -> None:
        """Send a partial result (e.g. streamed text) to ``on_partial`` on the main thread."""
        self._post(self.on_partial, item)

    def progress(self, done: int, total: int) -> None:
        """Report progress to ``on_progress`` on the main thread; honours Cancel between steps."""
        self._post(self.on_progress, done, total)

    def _post(self, callback: Callback | None, *args: Any) -> None:
        if callback is not None and self._outbox is not None:
            self._outbox.put((callback, args))


class ModelWorker:
    """Runs jobs one at a time, in order, on a single daemon thread."""

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._outbox: queue.Queue = queue.Queue()
        self._current: Job | None = None
        self._queued: list[Job] = []  # submitted, not started yet (so Cancel reaches them too)
        self._outstanding = 0  # submitted jobs whose "finished" marker was not delivered yet (main thread only)
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="MedVLSAM2-model", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Job:
        """Queue ``job``; its callbacks run later on the thread that calls ``deliver``."""
        if not self.alive:
            raise RuntimeError("the model worker was stopped; reload the module")
        job._outbox = self._outbox
        self._outstanding += 1
        with self._lock:
            self._queued.append(job)
        self._jobs.put(job)
        return job

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self._queued.remove(job)
                self._current = job
            try:
                job.cancel.raise_if_cancelled()  # cancelled before it started
                result = job.run(job)
            except BaseException as exc:  # delivered to the main thread; the worker keeps running
                job._post(job.on_error, exc)
            else:
                job._post(job.on_done, result)
            finally:
                with self._lock:
                    self._current = None
                self._outbox.put((None, ()))  # marks "job finished" for pending()

    @property
    def current(self) -> Job | None:
        with self._lock:
            return self._current

    def cancel_current(self) -> None:
        """Ask the running job, and every job queued behind it, to stop at their next check."""
        with self._lock:
            jobs = ([self._current] if self._current is not None else []) + list(self._queued)
        for job in jobs:
            job.cancel.cancel()

    def deliver(self, timeout: float = 0.0) -> int:
        """Run queued callbacks on the calling (main) thread; returns how many jobs finished.

        ``timeout`` > 0 waits up to that long for the first item (tests use it instead of a timer).
        """
        finished = 0
        block = timeout > 0
        while True:
            try:
                callback, args = self._outbox.get(block=block, timeout=timeout if block else None)
            except queue.Empty:
                return finished
            block = False
            if callback is None:
                finished += 1
                self._outstanding -= 1
            else:
                callback(*args)

    def wait_all(self, timeout: float = 60.0) -> None:
        """Deliver callbacks until every submitted job has finished (tests, the self-test, shutdown)."""
        import time

        deadline = time.monotonic() + timeout
        while self._outstanding > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"model call still running after {timeout:.0f} s")
            self.deliver(timeout=0.05)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    @property
    def idle(self) -> bool:
        """No submitted job is waiting for delivery."""
        return self._outstanding == 0

    def stop(self) -> None:
        """Cancel the running job and end the thread after it (pending callbacks are dropped)."""
        self.cancel_current()
        self._stopping = True
        self._jobs.put(None)
