"""Files the project ships next to the code (weights manifest, demo weights). Torch-free.

In the repository they sit in the top-level ``Resources/``; in an installed Slicer extension the module's
CMakeLists copies them into the module's ``Resources/`` (next to the ``medvlsam2`` package folder).
"""

from __future__ import annotations

from pathlib import Path

from .errors import InputError

_PACKAGE_PARENT = Path(__file__).resolve().parents[1]  # the folder holding the medvlsam2 package
SEARCH_DIRS = (
    _PACKAGE_PARENT.parent / "Resources",  # repository: <repo>/Resources
    _PACKAGE_PARENT / "Resources",  # installed module: <qt-scripted-modules>/Resources
)


def resource_path(name: str, must_exist: bool = False) -> Path:
    """Path of the shipped resource ``name`` (a file or folder, e.g. ``"DemoWeights"``).

    Returns the first existing candidate in ``SEARCH_DIRS``. When none exists, returns the repository
    path (so callers can test ``.exists()``), or raises ``InputError`` naming the places searched when
    ``must_exist`` is true.
    """
    candidates = [d / name for d in SEARCH_DIRS]
    for path in candidates:
        if path.exists():
            return path
    if must_exist:
        raise InputError(f"the shipped resource {name!r} is missing; looked in "
                         f"{', '.join(str(p) for p in candidates)}. Reinstall the extension or restore the "
                         "repository's Resources folder")
    return candidates[0]
