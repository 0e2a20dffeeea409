"""First-use dependency check and the installation plan, shown to the user before anything is installed.

The packages are the engine's one requirements list, ``medvlsam2/requirements.txt`` (installed with the
module; Testing/Python/test_slicer_static.py checks it against the server's real imports). ``plan`` turns the missing ones into commands that run in a child
process of Slicer's Python (``installer.InstallRun``: off the main thread, with progress and Cancel, after
one consent dialog that lists every package with its approximate download size). Three need care:
- torch is installed by light-the-torch, the tool the PyTorch extension (``PyTorchUtils``) uses to pick the
  build that matches the computer's CUDA driver, but with torch alone: ``PyTorchUtils.installTorch`` always
  adds torchvision, which MedVLSAM2 does not use;
- sam2 is installed with ``SAM2_BUILD_CUDA=0 --no-build-isolation --no-deps``: its declared torchvision
  would pull a second, CUDA-sized torch, a build environment would download torch again, and the video
  predictor needs neither; its own runtime packages (hydra-core, iopath, pillow, tqdm) are listed here;
  then its files are checked against the SAM2 authors' repository (``sam2_provenance``);
- ``slicer.packaging.pip_ensure`` (Slicer >= 5.11) is not used: it takes no per-package flags (sam2's) and
  shows its own dialog, so the user would see two lists and never the sam2 step.
Nothing is installed at import time.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "medvlsam2" / "requirements.txt"  # the engine's one list
# pip name -> import name, where they differ (``missing`` looks for the module, which needs no metadata)
IMPORT_NAMES = {"hydra-core": "hydra", "pillow": "PIL", "pyyaml": "yaml", "rouge-score": "rouge_score"}
CLIENT_PACKAGES = ("numpy", "httpx", "zstandard")  # what the torch-free client imports (any Slicer's Python)


def read_requirements(path: Path = REQUIREMENTS_FILE) -> dict[str, str]:
    """Import name -> pip requirement, from the engine's requirements file; its ``# no-deps:`` lines (sam2) too."""
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("# no-deps:"):
            line = line.split(":", 1)[1].strip()
        elif not line or line.startswith("#"):
            continue
        name = re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0]
        out[IMPORT_NAMES.get(name.lower(), name)] = line
    return out


_ALL = read_requirements()
CLIENT_REQUIREMENTS: dict[str, str] = {n: _ALL[n] for n in CLIENT_PACKAGES}
SERVER_REQUIREMENTS: dict[str, str] = {n: r for n, r in _ALL.items() if n not in CLIENT_PACKAGES}
SAM2_ENV = {"SAM2_BUILD_CUDA": "0"}
SAM2_FLAGS = ("--no-build-isolation", "--no-deps")
TORCH_INSTALLER = "light-the-torch>=0.5"
# approximate download in MB (the wheel for this platform; torch: a CUDA build with its NVIDIA libraries,
# about 200 MB for a CPU build); shown in the consent dialog so the user knows what to expect
# (by import name; a package not named here counts 1 MB)
DOWNLOAD_MB = {"numpy": 20, "zstandard": 5, "torch": 2500, "PIL": 5, "transformers": 12, "tokenizers": 3,
               "monai": 3, "SimpleITK": 55, "scipy": 40, "nltk": 2}
CONSENT_TEXT = ("MedVLSAM2 needs these Python packages, which are not installed yet:\n\n{packages}\n\n"
                "About {total} MB in all, downloaded from the Python Package Index (torch from download.pytorch.org "
                "in the build that matches this computer's GPU driver) into Slicer's Python. The installation runs "
                "in the background with progress and a Cancel button; Slicer may need a restart afterwards. "
                "Install now?")


@dataclass
class InstallStep:
    """One command run by Slicer's Python: ``args`` follow the interpreter (``-m pip install ...``)."""

    label: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)


def missing(requirements: Iterable[str]) -> list[str]:
    """Import names among ``requirements`` (a requirements dict: its keys) whose module cannot be found (not imported)."""
    return [name for name in requirements if importlib.util.find_spec(name) is None]


def requirement_strings(names: list[str]) -> list[str]:
    table = {**CLIENT_REQUIREMENTS, **SERVER_REQUIREMENTS}
    return [table[n] for n in names]


def consent_message(names: list[str]) -> str:
    """The one consent dialog: every package with its approximate size, and the total."""
    lines = [f"  - {req}  (about {DOWNLOAD_MB.get(n, 1)} MB)" for n, req in zip(names, requirement_strings(names))]
    return CONSENT_TEXT.format(packages="\n".join(lines), total=sum(DOWNLOAD_MB.get(n, 1) for n in names))


def pip(*args: str) -> list[str]:
    return ["-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off", *args]


def plan(names: list[str], have_torch_installer: bool | None = None) -> list[InstallStep]:
    """Commands for the missing import ``names``: torch first (sam2 builds against it), sam2 last, then its check."""
    steps: list[InstallStep] = []
    rest = [n for n in names if n not in ("torch", "sam2")]
    if "torch" in names:
        if have_torch_installer is None:
            have_torch_installer = importlib.util.find_spec("light_the_torch") is not None
        if not have_torch_installer:
            steps.append(InstallStep("light-the-torch (picks the torch build for this GPU)", pip(TORCH_INSTALLER)))
        steps.append(InstallStep("torch", ["-m", "light_the_torch", "install", SERVER_REQUIREMENTS["torch"]]))
    if rest:
        steps.append(InstallStep(", ".join(requirement_strings(rest)), pip(*requirement_strings(rest))))
    if "sam2" in names:
        # --no-build-isolation builds against the installed torch, so the build tools must be there
        steps.append(InstallStep("setuptools, wheel (to build sam2)", pip("setuptools", "wheel")))
        steps.append(InstallStep(SERVER_REQUIREMENTS["sam2"], pip(*SAM2_FLAGS, SERVER_REQUIREMENTS["sam2"]),
                                 dict(SAM2_ENV)))
        checker = Path(__file__).with_name("sam2_provenance.py")
        steps.append(InstallStep("sam2 compared with the SAM2 authors' release", [str(checker)]))
    return steps
