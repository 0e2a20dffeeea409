"""First-use dependency check and installation, only after the user agreed.

Every package the local model server imports is listed (Testing/Python/test_slicer_static.py checks the
list against the server's real imports). Three need care:
- torch comes from the PyTorch extension's installer (``PyTorchUtils``, EXTENSION_DEPENDS) when it is
  there: it picks the build that matches the computer's CUDA driver;
- sam2 is installed with ``SAM2_BUILD_CUDA=0 --no-build-isolation --no-deps``: its declared torchvision
  would pull a second, CUDA-sized torch, a build environment would download torch again, and the video
  predictor needs neither; its own runtime packages (hydra-core, iopath, pillow, tqdm) are listed here;
  its files are then checked against the SAM2 authors' repository (``sam2_provenance``) before use;
- everything else goes through ``slicer.packaging.pip_ensure`` (Slicer >= 5.11, own consent dialog) or
  ``slicer.util.pip_install`` (older; main thread). Nothing is installed at import time.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Iterable

# import name -> pip requirement
CLIENT_REQUIREMENTS: dict[str, str] = {"numpy": "numpy>=1.24", "httpx": "httpx>=0.27", "zstandard": "zstandard>=0.22"}
SERVER_REQUIREMENTS: dict[str, str] = {
    "torch": "torch>=2.5.1",
    "sam2": "sam2==1.1.0",  # the release whose files sam2_provenance checks against the SAM2 authors' repository
    "hydra": "hydra-core>=1.3.2",  # sam2's config system (sam2 is installed --no-deps)
    "iopath": "iopath>=0.1.10",
    "PIL": "pillow>=9.4",
    "tqdm": "tqdm>=4.66",
    "transformers": "transformers>=5.0",
    "tokenizers": "tokenizers>=0.20",
    "peft": "peft>=0.13",
    "safetensors": "safetensors>=0.4",
    "huggingface_hub": "huggingface_hub>=0.30",
    "monai": "monai>=1.4",
    "einops": "einops>=0.7",
    "SimpleITK": "SimpleITK>=2.3",
    "yaml": "pyyaml>=6",
    "fastapi": "fastapi>=0.110",
    "starlette": "starlette>=0.37",
    "uvicorn": "uvicorn>=0.30",
}
SAM2_ENV = {"SAM2_BUILD_CUDA": "0"}
SAM2_FLAGS = ("--no-build-isolation", "--no-deps")
CONSENT_TEXT = ("MedVLSAM2 needs these Python packages, which are not installed yet:\n\n{packages}\n\n"
                "They will be downloaded from the Python Package Index into Slicer's Python "
                "(torch through the PyTorch extension; a few hundred MB to a few GB; Slicer may need a restart). "
                "Install now?")


@dataclass
class InstallStep:
    """One installer call: ``via`` is "pytorch" (the PyTorch extension) or "pip"."""

    via: str
    requirements: list[str]
    flags: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


def missing(requirements: Iterable[str]) -> list[str]:
    """Import names among ``requirements`` (a requirements dict: its keys) whose module cannot be found (not imported)."""
    return [name for name in requirements if importlib.util.find_spec(name) is None]


def requirement_strings(names: list[str]) -> list[str]:
    table = {**CLIENT_REQUIREMENTS, **SERVER_REQUIREMENTS}
    return [table[n] for n in names]


def consent_message(names: list[str]) -> str:
    return CONSENT_TEXT.format(packages="\n".join(f"  - {r}" for r in requirement_strings(names)))


def has_pip_ensure(slicer_module=None) -> bool:
    """True on Slicer >= 5.11, whose ``pip_ensure`` shows its own consent and progress dialog."""
    if slicer_module is None:
        import slicer as slicer_module
    return hasattr(getattr(slicer_module, "packaging", None), "pip_ensure")


def has_pytorch_extension() -> bool:
    return importlib.util.find_spec("PyTorchUtils") is not None


def plan(names: list[str], pytorch_extension: bool) -> list[InstallStep]:
    """Installer calls for the missing import ``names``: torch first (sam2 builds against it), sam2 last."""
    steps: list[InstallStep] = []
    rest = [n for n in names if n not in ("torch", "sam2")]
    if "torch" in names:
        steps.append(InstallStep("pytorch" if pytorch_extension else "pip", [SERVER_REQUIREMENTS["torch"]]))
    if rest:
        steps.append(InstallStep("pip", requirement_strings(rest)))
    if "sam2" in names:
        # --no-build-isolation builds against the installed torch, so the build tools must be there
        steps.append(InstallStep("pip", ["setuptools", "wheel"]))
        steps.append(InstallStep("pip", [SERVER_REQUIREMENTS["sam2"]], SAM2_FLAGS, dict(SAM2_ENV)))
    return steps


def install(names: list[str], slicer_module=None) -> list[str]:
    """Run the installer calls for ``names`` (call on the main thread, after consent); returns the helpers used.

    Without ``pip_ensure`` call only after the user agreed to ``consent_message`` (``pip_ensure`` and the
    PyTorch installer ask by themselves).
    """
    if slicer_module is None:
        import slicer as slicer_module
    used = []
    for step in plan(list(names), has_pytorch_extension()):
        if step.via == "pytorch":
            import PyTorchUtils

            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True)
            if torch is None:
                raise RuntimeError("PyTorch was not installed (cancelled or failed); open the PyTorch Utils module "
                                   "to install it, then press Start again")
            used.append("PyTorchUtils")
            continue
        saved = {k: os.environ.get(k) for k in step.env}
        os.environ.update(step.env)
        try:
            if not step.flags and has_pip_ensure(slicer_module):
                slicer_module.packaging.pip_ensure(step.requirements, requester="MedVLSAM2Slicer")
                used.append("pip_ensure")
            else:
                slicer_module.util.pip_install(" ".join([*step.flags, *step.requirements]))
                used.append("pip_install")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        if step.requirements == [SERVER_REQUIREMENTS["sam2"]]:
            from . import sam2_provenance

            importlib.invalidate_caches()
            sam2_provenance.verify()  # a file that differs from the authors' release stops the installation here
            used.append("sam2_provenance")
    return used
