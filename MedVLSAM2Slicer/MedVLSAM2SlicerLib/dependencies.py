"""First-use dependency check and installation, only after the user agreed.

Slicer >= 5.11 has ``slicer.packaging.pip_ensure``; older versions use ``slicer.util.pip_install`` on
the main thread. Nothing is installed at import time.
"""

from __future__ import annotations

import importlib.util

# import name -> pip requirement; torch itself comes from the PyTorch extension (EXTENSION_DEPENDS)
CLIENT_REQUIREMENTS: dict[str, str] = {"httpx": "httpx>=0.27", "zstandard": "zstandard>=0.22"}
SERVER_REQUIREMENTS: dict[str, str] = {
    "torch": "torch>=2.3",
    "sam2": "sam2>=1.1",
    "transformers": "transformers>=4.46",
    "SimpleITK": "SimpleITK>=2.3",
    "fastapi": "fastapi>=0.110",
    "uvicorn": "uvicorn>=0.29",
    "safetensors": "safetensors>=0.4",
    "tokenizers": "tokenizers>=0.19",
}
CONSENT_TEXT = ("MedVLSAM2 needs these Python packages, which are not installed yet:\n\n{packages}\n\n"
                "They will be downloaded from the Python Package Index into Slicer's Python "
                "(a few hundred MB; Slicer may need a restart). Install now?")


def missing(requirements: dict[str, str]) -> list[str]:
    """Requirements whose module cannot be found (without importing it)."""
    return [req for name, req in requirements.items() if importlib.util.find_spec(name) is None]


def consent_message(requirements: list[str]) -> str:
    return CONSENT_TEXT.format(packages="\n".join(f"  - {r}" for r in requirements))


def has_pip_ensure(slicer_module=None) -> bool:
    """True on Slicer >= 5.11, whose ``pip_ensure`` shows its own consent and progress dialog."""
    if slicer_module is None:
        import slicer as slicer_module
    return hasattr(getattr(slicer_module, "packaging", None), "pip_ensure")


def install(requirements: list[str], slicer_module=None) -> str:
    """Install ``requirements`` with Slicer's own helpers; returns which helper was used.

    Call from the main thread. Without ``pip_ensure``, call only after the user agreed to
    ``consent_message`` (``pip_ensure`` asks by itself).
    """
    if not requirements:
        return "none"
    if slicer_module is None:
        import slicer as slicer_module
    packaging = getattr(slicer_module, "packaging", None)
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        packaging.pip_ensure(list(requirements), requester="MedVLSAM2Slicer")  # asks consent itself
        return "pip_ensure"
    slicer_module.util.pip_install(list(requirements))
    return "pip_install"
