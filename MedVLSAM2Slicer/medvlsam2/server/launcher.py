"""Start ``medvlsam2 serve`` as a child process on a free loopback port with a fresh token. Torch-free.

The token reaches the child through an environment variable (not the command line, which other users
can read) and stays in memory here. ``stop()`` ends the child and its process group.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path

from ..errors import MedVLSAM2Error
from ..protocol import TOKEN_ENV

ENGINE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the medvlsam2 package


class ServerStartError(MedVLSAM2Error):
    code = "server_start"


class ServerProcess:
    """A running local server: ``url``, ``token``, ``is_alive()``, ``stop()``, ``last_log_lines(n)``."""

    def __init__(self, proc: subprocess.Popen, url: str, token: str, log_path: Path, owns_log: bool) -> None:
        self.proc, self.url, self.token, self.log_path = proc, url, token, log_path
        self._owns_log = owns_log
        atexit.register(self.stop)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    def last_log_lines(self, n: int = 20) -> list[str]:
        return _tail(self.log_path, n)

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the server and everything it started; waits up to ``timeout`` then kills."""
        if self.proc.poll() is None:
            _signal_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc, getattr(signal, "SIGKILL", signal.SIGTERM))
                self.proc.wait(timeout)
        else:  # the server is gone; children it left in its group go too
            _signal_group(self.proc, getattr(signal, "SIGKILL", signal.SIGTERM))
        atexit.unregister(self.stop)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        if os.name == "posix":
            os.killpg(proc.pid, sig)  # the child leads its own session, see start_new_session
        else:
            proc.terminate()
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, n: int) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            return [line.rstrip("\n") for line in deque(f, maxlen=n)]
    except OSError:
        return []


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _healthy(url: str, token: str) -> bool:
    req = urllib.request.Request(url + "/v1/health", headers={"Authorization": f"Bearer {token}"})
    try:
        with _NO_PROXY.open(req, timeout=2) as r:  # a local server: never through a proxy
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def launch_server(python: str = sys.executable, model: str = "tiny", device: str = "auto", host: str = "127.0.0.1",
                  port: int | None = None, log_path=None, ready_timeout: float = 120, extra_args: list[str] | None = None,
                  ) -> ServerProcess:
    """Start the server with ``python``, wait until it answers /v1/health, and return its handle.

    ``port`` None or 0 picks a free port. On failure the child is stopped and the error quotes the
    last lines of its log. ``extra_args`` are passed to ``medvlsam2 serve`` (e.g. ``["--lease-s", "60"]``).
    """
    token = secrets.token_urlsafe(32)
    owns_log = log_path is None
    log = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="medvlsam2-server-", suffix=".log")[1])
    ready = Path(tempfile.mkdtemp(prefix="medvlsam2-ready-")) / "ready.json"
    cmd = [python, "-m", "medvlsam2", "serve", "--model", str(model), "--device", device, "--host", host,
           "--port", str(port or 0), "--ready-file", str(ready), *(extra_args or [])]
    env = dict(os.environ, **{TOKEN_ENV: token, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ENGINE_ROOT), env.get("PYTHONPATH", "")) if p)
    env["NO_PROXY"] = ",".join(p for p in (env.get("NO_PROXY", ""), "127.0.0.1,localhost") if p)
    kwargs = {"start_new_session": True} if os.name == "posix" else \
        {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, **kwargs)
        except OSError as exc:
            raise ServerStartError(f"cannot start the server with {python!r} ({exc}); set a Python that has "
                                   "medvlsam2 and torch installed") from None
    server = ServerProcess(proc, "", token, log, owns_log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if not server.is_alive():
            lines = "\n".join(server.last_log_lines(15))
            server.stop()
            raise ServerStartError(f"the server exited during start (code {proc.returncode}); last log lines:\n{lines}")
        if not server.url and ready.exists():
            server.url = json.loads(ready.read_text())["url"]
        if server.url and _healthy(server.url, token):
            return server
        time.sleep(0.2)
    lines = "\n".join(server.last_log_lines(15))
    server.stop()
    raise ServerStartError(f"the server did not become healthy within {ready_timeout:.0f} s; last log lines:\n{lines}")
