"""The module's link to the model: a local server it starts (127.0.0.1, random token) or a remote URL.

Everything here may block (process start, HTTP), so the widget calls it from the model worker thread.
The engine's launcher (``medvlsam2.server.launcher.launch_server``) and client (``medvlsam2.client.Client``)
are imported lazily: both are torch-free.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvlsam2.errors import InputError


NAMED_CONFIGS = ("tiny", "base")  # random weights, for trying the module; "paper" is too large for a panel default
from medvlsam2.factory import describe  # torch-free: says what a spec is without loading it
READY_TIMEOUT_S = 300.0  # first start on a laptop CPU imports torch and builds the model


@dataclass
class ServerOptions:
    model: str = "demo"  # see ``model_spec``
    device: str = "auto"
    python: str = ""  # empty: this Python (Slicer's)
    host: str = "127.0.0.1"
    port: int = 0
    log_path: str = ""
    ready_timeout: float = READY_TIMEOUT_S


@dataclass(frozen=True)
class ServerInfo:
    device: str
    memory_gb: float | None
    capabilities: frozenset[str] | None  # None: an older server that does not say
    provenance: str = ""  # "random", "phantom-trained", "released", "trained"
    model: str = ""
    description: str = ""  # the served model in words (factory's ``description``)


def demo_weights() -> Path | None:
    """The shipped demo bundle (repository or installed module ``Resources/DemoWeights``), or None."""
    from medvlsam2.resources import resource_path

    folder = resource_path("DemoWeights")
    return folder if (folder / "config.json").is_file() else None


def manifest_names() -> list[str]:
    """Names of the weights manifest (released checkpoints the engine can fetch or import)."""
    from medvlsam2 import weights

    return list(weights.load_manifest())


def installed(name: str) -> bool:
    """True when manifest entry ``name`` is installed (a checkpoint file, or a folder for a Hugging Face model)."""
    from medvlsam2 import weights

    return weights.weight_path(name).exists()


def model_spec(model: str) -> str:
    """What ``medvlsam2 serve --model`` takes for the panel's choice (see ``medvlsam2.factory.load_model``).

    "demo" is the shipped trained bundle (not the random "demo" config); a named random config; a folder
    (our bundle or a Med3DVLM folder); a released checkpoint (.pt / .safetensors) or recipe (.yaml) file;
    or an installed manifest name (``medsam2-latest``, ``sam2.1-hiera-tiny``...).
    """
    model = model.strip()
    if model == "demo":
        folder = demo_weights()
        if folder is None:
            raise InputError("the demo weights (Resources/DemoWeights) are not installed; reinstall the extension "
                             "or choose 'tiny' (random weights)")
        return str(folder)
    path = Path(model).expanduser()
    if model in NAMED_CONFIGS:
        return model
    if path.exists():
        describe(str(path))  # the engine's own check (no weights read): a wrong file or folder is refused here
        return str(path)
    if model in manifest_names():
        if not installed(model):
            raise InputError(f"the weights {model!r} are not on this computer; download them or use "
                             "'Import weights...' with a file obtained elsewhere")
        return model
    raise InputError(f"the local server cannot load {model!r}: choose 'demo', {', '.join(map(repr, NAMED_CONFIGS))}, "
                     "a weights name from the list, a .pt/.safetensors/.yaml file or a model folder")


def _engine(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise InputError(f"{what} is not available ({exc}); update the MedVLSAM2Slicer extension") from None


class Connection:
    """Holds at most one server process and one client; ``open_session`` gives a RemoteSession."""

    def __init__(self) -> None:
        self.server: Any = None
        self.client: Any = None

    @property
    def connected(self) -> bool:
        return self.client is not None and (self.server is None or self.server.is_alive())

    def start_local(self, options: ServerOptions) -> None:
        """Start ``medvlsam2 serve`` in a child process and connect to it (blocks until it answers)."""
        launcher = _engine("medvlsam2.server.launcher", "the local server launcher")
        self.stop()
        log_path = options.log_path or str(Path.home() / ".cache" / "medvlsam2" / "server.log")
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        self.server = launcher.launch_server(python=options.python or sys.executable, model=model_spec(options.model),
                                             device=options.device, host=options.host, port=options.port,
                                             log_path=log_path, ready_timeout=options.ready_timeout)
        self._connect(self.server.url, self.server.token)

    def connect_remote(self, url: str, token: str) -> None:
        """Use a server started elsewhere (the token is kept in memory only)."""
        url = url.strip()
        if not url.startswith(("http://", "https://")):
            raise InputError(f"remote server URL must start with http:// or https://, got {url!r}")
        self.stop()
        self._connect(url, token)

    def _connect(self, url: str, token: str) -> None:
        client_module = _engine("medvlsam2.client", "the model client")
        self.client = client_module.Client(url, token)

    def open_session(self, volume) -> Any:
        """Upload ``volume`` once and return a session object with the Session's method names."""
        if self.client is None:
            raise InputError("not connected: press Start (local server) or set a remote URL first")
        return self.client.open_session(volume)

    def device_info(self) -> ServerInfo:
        """Device, memory, capabilities and provenance from /v1/version; refuses a server of another API version."""
        if self.client is None:
            raise InputError("not connected: press Start (local server) or set a remote URL first")
        data = self.client.version()
        memory = data.get("memory_gb")
        capabilities = data.get("capabilities")
        return ServerInfo(str(data.get("device", "")), float(memory) if memory is not None else None,
                          frozenset(capabilities) if capabilities is not None else None,
                          str(data.get("provenance", "")), str(data.get("model", "")),
                          str(data.get("description", "")))

    def last_log_lines(self, n: int = 20) -> str:
        if self.server is None:
            return ""
        return "\n".join(self.server.last_log_lines(n))

    def stop(self) -> None:
        """Close the client and stop the server this module started (a remote server keeps running)."""
        client, self.client = self.client, None
        close = getattr(client, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # the server may already be gone
                pass
        server, self.server = self.server, None
        if server is not None:
            server.stop()
