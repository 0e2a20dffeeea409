"""Runs the installation plan (``dependencies.plan``) in child processes of Slicer's Python, one step at a
time, off the main thread, with progress and Cancel (Qt-free).

``SubprocessRunner`` reads each child's output on a thread; the panel's timer calls ``poll`` on the main
thread, which hands the lines and the exit code to ``InstallRun``. A failed step stops the run with its last
output lines; Cancel kills the running step (pip leaves each package installed or not, never half).
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from typing import Callable

from .dependencies import InstallStep

LOG_LINES = 12  # output lines quoted when a step fails


def slicer_python() -> str:
    """The interpreter that installs into Slicer's Python: Slicer's ``PythonSlicer`` launcher where it exists."""
    return shutil.which("PythonSlicer") or sys.executable


class SubprocessRunner:
    """One child process at a time; its lines and exit code are delivered by ``poll`` on the caller's thread."""

    def __init__(self) -> None:
        self._events: queue.Queue = queue.Queue()
        self._proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, program: str, args: list[str], env: dict[str, str], on_line: Callable[[str], None],
              on_exit: Callable[[int], None]) -> None:
        kwargs = {"start_new_session": True} if os.name == "posix" else \
            {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
        try:
            proc = subprocess.Popen([program, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env={**os.environ, **env}, text=True, errors="replace",
                                    bufsize=1, **kwargs)
        except OSError as exc:
            self._events.put((on_line, f"cannot run {program}: {exc}"))
            self._events.put((on_exit, 127))
            return
        self._proc = proc

        def read() -> None:
            for line in proc.stdout:
                self._events.put((on_line, line.rstrip()))
            self._events.put((on_exit, proc.wait()))
        threading.Thread(target=read, name="MedVLSAM2 install", daemon=True).start()

    def kill(self) -> None:
        """Stop the child and what it started (pip's build steps)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            if os.name == "posix":
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except ProcessLookupError:
            pass

    def poll(self, timeout: float = 0.0) -> int:
        """Deliver waiting lines and exits (main thread); returns how many."""
        n = 0
        try:
            while True:
                callback, value = self._events.get(timeout=timeout) if n == 0 and timeout else self._events.get_nowait()
                callback(value)
                n += 1
        except queue.Empty:
            return n


class InstallRun:
    """The steps in order; ``on_progress(done_steps, total_steps, label, last_line)`` and ``on_done(ok, message)``."""

    def __init__(self, steps: list[InstallStep], runner, on_progress: Callable[[int, int, str, str], None],
                 on_done: Callable[[bool, str], None], python: str | None = None) -> None:
        self.steps, self.runner, self.python = list(steps), runner, python or slicer_python()
        self.on_progress, self.on_done = on_progress, on_done
        self.index = 0
        self.state = "pending"  # running, done, failed, cancelled
        self.log: deque[str] = deque(maxlen=LOG_LINES)

    def start(self) -> None:
        if self.state != "pending":
            raise RuntimeError(f"this installation already ran ({self.state})")
        self.state = "running"
        self._next()

    def cancel(self) -> None:
        if self.state == "running":
            self.state = "cancelled"
            self.runner.kill()

    def _next(self) -> None:
        if self.index == len(self.steps):
            self.state = "done"
            self.on_progress(self.index, len(self.steps), "", "")
            self.on_done(True, f"installation done ({len(self.steps)} steps)")
            return
        step = self.steps[self.index]
        self.log.clear()
        self.on_progress(self.index, len(self.steps), step.label, "")
        self.runner.start(self.python, step.args, step.env, self._line, self._exit)

    def _line(self, line: str) -> None:
        if line.strip():
            self.log.append(line)
            self.on_progress(self.index, len(self.steps), self.steps[self.index].label, line)

    def _exit(self, code: int) -> None:
        label = self.steps[self.index].label
        if self.state == "cancelled":
            self.on_done(False, f"installation cancelled during {label}; the steps before it stay installed")
        elif code != 0:
            self.state = "failed"
            self.on_done(False, f"installing {label} failed (exit code {code}): " + " | ".join(self.log))
        else:
            self.index += 1
            self._next()
