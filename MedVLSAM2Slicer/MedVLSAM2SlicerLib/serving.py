"""Which ways of reaching a model work in this Slicer, decided before anything is installed (Qt-free).

Two modes:
- "local": Start runs ``medvlsam2 serve`` on this computer. With Slicer's own Python that Python needs the
  server's packages (torch, sam2, transformers...), whose releases need Python >= 3.10; with an external
  Python (setting ``pythonExecutable``) Slicer's Python needs only the client.
- "remote": connect to a server started elsewhere (``medvlsam2 serve`` on a GPU computer). Slicer's Python
  needs only the torch-free client (numpy, httpx, zstandard), which works from Python 3.9 (Slicer 5.6 / 5.8).

Slicer's Python per release: 5.6 and 5.8 ship 3.9, 5.10 ships 3.12 (docs/slicer.md lists what each gets).
"""

from __future__ import annotations

from dataclasses import dataclass

from .dependencies import CLIENT_REQUIREMENTS, SERVER_REQUIREMENTS

# sam2, torch, monai, peft and huggingface_hub declare Requires-Python >= 3.10 (pyproject's requires-python);
# Testing/Python/test_slicer_serving.py checks this against the installed distributions.
LOCAL_SERVER_MIN_PYTHON = (3, 10)
CLIENT_MIN_PYTHON = (3, 9)  # the client's own code and numpy/httpx/zstandard; tested on 3.9 (test_client_py39.py)
LOCAL, REMOTE = "local", "remote"
LABELS = {LOCAL: "Local server (this computer)", REMOTE: "Connect to a server (URL)"}


def _version(v: tuple[int, ...]) -> str:
    return ".".join(map(str, v[:2]))


@dataclass(frozen=True)
class ServerMode:
    name: str  # LOCAL or REMOTE
    label: str
    available: bool
    reason: str = ""  # why it is not available (shown in the panel), or a note


def server_modes(python_version: tuple[int, ...], external_python: str = "") -> list[ServerMode]:
    """The modes the panel offers, available ones first; ``python_version`` is Slicer's (``sys.version_info``)."""
    py = tuple(python_version[:2])
    if py < CLIENT_MIN_PYTHON:
        reason = (f"Slicer's Python {_version(py)} is too old for the MedVLSAM2 client (needs "
                  f"{_version(CLIENT_MIN_PYTHON)} or later): use Slicer 5.6 or later")
        return [ServerMode(LOCAL, LABELS[LOCAL], False, reason), ServerMode(REMOTE, LABELS[REMOTE], False, reason)]
    remote = ServerMode(REMOTE, LABELS[REMOTE], True)
    if external_python or py >= LOCAL_SERVER_MIN_PYTHON:
        return [ServerMode(LOCAL, LABELS[LOCAL], True), remote]
    reason = (f"A local server needs Python {_version(LOCAL_SERVER_MIN_PYTHON)} or later (torch, sam2); this "
              f"Slicer has Python {_version(py)}. Connect to a server started elsewhere (medvlsam2 serve), use "
              "Slicer 5.10 or later, or set an external Python for the server in the settings.")
    return [remote, ServerMode(LOCAL, LABELS[LOCAL], False, reason)]


@dataclass(frozen=True)
class StartPlan:
    mode: str
    needs: tuple[str, ...]  # import names Slicer's Python must have (install with consent when missing)
    remote_url: str = ""


def plan_start(mode: str, python_version: tuple[int, ...], remote_url: str = "",
               external_python: str = "") -> StartPlan:
    """What Start must do for ``mode``; raises ValueError with what to change when the mode cannot work here.

    Called before any installation, so an unsupported mode never downloads gigabytes first.
    """
    offered = {m.name: m for m in server_modes(python_version, external_python)}
    if mode not in offered:
        raise ValueError(f"unknown server mode {mode!r}; choose {LOCAL!r} or {REMOTE!r}")
    if not offered[mode].available:
        raise ValueError(offered[mode].reason)
    client = tuple(CLIENT_REQUIREMENTS)
    if mode == REMOTE:
        url = remote_url.strip()
        if not url:
            raise ValueError("enter the server's URL (e.g. https://gpu-host:8000) and its token")
        return StartPlan(REMOTE, client, url)
    if external_python:  # the server runs in that Python: Slicer's needs only the client
        return StartPlan(LOCAL, client)
    return StartPlan(LOCAL, client + tuple(SERVER_REQUIREMENTS))
