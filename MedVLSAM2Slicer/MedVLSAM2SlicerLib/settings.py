"""Persistent user settings (QSettings keys). Secrets are never stored: the remote token lives only in memory."""

from __future__ import annotations

from typing import Any, Protocol

PREFIX = "MedVLSAM2Slicer/"
DEFAULTS: dict[str, Any] = {
    "model": "demo",          # "demo" (shipped trained bundle), "tiny"/"base" (random) or a bundle folder
    "device": "auto",         # auto, cuda, mps, cpu
    "serverMode": "",         # "local" or "remote" (serving.py); empty: the first mode this Slicer supports
    "remoteUrl": "",          # the server "remote" mode connects to
    "serverPort": 0,          # 0: pick a free port
    "pythonExecutable": "",   # empty: Slicer's own Python
    "weightsDir": "",         # empty: the engine's default cache
    "consentedInstall": False,
    "consentedDownload": False,
}
SECRET_WORDS = ("token", "password", "secret", "key")


class SettingsStore(Protocol):
    def value(self, key: str, default: Any = None) -> Any: ...
    def setValue(self, key: str, value: Any) -> None: ...


class Settings:
    """Typed access to ``DEFAULTS`` keys on a QSettings-like store (``qt.QSettings()`` in Slicer)."""

    def __init__(self, store: SettingsStore) -> None:
        self._store = store

    def get(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise KeyError(f"unknown setting {name!r}; known: {', '.join(DEFAULTS)}")
        default = DEFAULTS[name]
        value = self._store.value(PREFIX + name, default)
        if isinstance(default, bool):  # QSettings returns "true"/"false" strings on some platforms
            return value if isinstance(value, bool) else str(value).lower() == "true"
        return type(default)(value) if value is not None else default

    def set(self, name: str, value: Any) -> None:
        if any(word in name.lower() for word in SECRET_WORDS):
            raise ValueError(f"{name!r} looks like a secret; secrets are never written to settings")
        if name not in DEFAULTS:
            raise KeyError(f"unknown setting {name!r}; known: {', '.join(DEFAULTS)}")
        self._store.setValue(PREFIX + name, value)
