"""Weights manifest, local cache, resumable verified downloads and offline import.

Nothing is downloaded unless a user asks (``medvlsam2 weights download``). Entries whose SHA-256 is not
published yet (``null``) are checked against their size when known, and the digest of the installed
file is printed so a site can pin it in its own manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import CheckpointError, InputError
from .resources import resource_path
from .utils.cancel import CancelToken, check

MANIFEST_NAME = "weights_manifest.json"
CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightEntry:
    name: str
    url: str | None
    file: str
    size: int | None
    sha256: str | None
    license: str
    config: str | None = None  # sam2 config of a segmenter entry (its architecture)
    version: str | None = None
    kind: str = "sam2"  # "sam2": one checkpoint file; "med3dvlm": a Hugging Face model folder
    image_size: int | None = None  # native SAM2 input size (None: SAM2.1's 1024)
    repo: str | None = None  # Hugging Face repository id the file or folder is downloaded from
    revision: str | None = None  # pinned commit or tag (None: the repository's main branch)


def manifest_path() -> Path:
    """``$MEDVLSAM2_MANIFEST`` if set, else the shipped manifest (repository or installed module)."""
    override = os.environ.get("MEDVLSAM2_MANIFEST")
    return Path(override) if override else resource_path(MANIFEST_NAME)


def load_manifest(path: str | os.PathLike | None = None) -> dict[str, WeightEntry]:
    """Entries of the manifest at ``path`` (default: ``manifest_path()``)."""
    p = Path(path) if path else manifest_path()
    try:
        data = json.loads(p.read_text())["weights"]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot read the weights manifest {p}: {exc}") from None
    keys = {f for f in WeightEntry.__dataclass_fields__ if f != "name"}
    return {name: WeightEntry(name=name, **{k: v for k, v in e.items() if k in keys}) for name, e in data.items()}


def home_dir() -> Path:
    """``$MEDVLSAM2_HOME`` (default ~/.cache/medvlsam2): downloaded weights and prepared data live here."""
    return Path(os.environ.get("MEDVLSAM2_HOME", Path.home() / ".cache" / "medvlsam2"))


def cache_dir() -> Path:
    root = home_dir() / "weights"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _entry(name: str, manifest: dict[str, WeightEntry] | None) -> WeightEntry:
    manifest = manifest if manifest is not None else load_manifest()
    if name not in manifest:
        raise InputError(f"unknown weights {name!r}; `medvlsam2 weights list` shows: {', '.join(sorted(manifest))}")
    return manifest[name]


def weight_path(name: str, manifest: dict[str, WeightEntry] | None = None) -> Path:
    return cache_dir() / _entry(name, manifest).file


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(entry: WeightEntry, path: Path) -> str:
    """Raise ``CheckpointError`` if ``path`` is not the manifest's file; return its SHA-256."""
    if entry.size is not None and path.stat().st_size != entry.size:
        raise CheckpointError(f"{path.name} has {path.stat().st_size} bytes, the manifest says {entry.size}: "
                              "the file is truncated or a different release")
    digest = sha256_of(path)
    if entry.sha256 and digest != entry.sha256.lower():
        raise CheckpointError(f"{path.name} is corrupted or not the released file: SHA-256 {digest} "
                              f"does not match the manifest's {entry.sha256}")
    return digest


def list_weights(manifest: dict[str, WeightEntry] | None = None) -> list[dict]:
    manifest = manifest if manifest is not None else load_manifest()
    return [{"name": e.name, "installed": (cache_dir() / e.file).is_file(), "license": e.license,
             "size": e.size, "sha256": e.sha256 or "unknown", "url": e.url} for e in manifest.values()]


def download(name: str, progress: Callable[[int, int | None], None] | None = None,
             cancel: CancelToken | None = None, manifest: dict[str, WeightEntry] | None = None,
             timeout: float = 60.0) -> Path:
    """Download into the cache, resuming a ``.part`` file with an HTTP Range request; verify, then install."""
    entry = _entry(name, manifest)
    if not entry.url:
        raise InputError(f"{name} has no download URL; import the file with `medvlsam2 weights import {name} FILE`")
    final = cache_dir() / entry.file
    part = final.with_name(final.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(entry.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if have and response.status != 206:  # server ignored the range: start over
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else entry.size
            with open(part, "ab" if have else "wb") as out:
                done = have
                for block in iter(lambda: response.read(CHUNK), b""):
                    check(cancel)  # the .part stays for a later resume
                    out.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
    except OSError as exc:
        raise CheckpointError(f"download of {name} failed ({exc}); run the command again to resume, or download "
                              f"{entry.url} by other means and use `medvlsam2 weights import {name} FILE`") from None
    try:
        verify_file(entry, part)
    except CheckpointError:
        part.unlink()
        raise
    part.replace(final)
    return final


def import_file(name: str, source: str | os.PathLike, manifest: dict[str, WeightEntry] | None = None) -> Path:
    """Offline sites: copy a file obtained by other means into the cache after verifying it."""
    entry = _entry(name, manifest)
    src = Path(source)
    if not src.is_file():
        raise InputError(f"no such file: {src}")
    verify_file(entry, src)
    final = cache_dir() / entry.file
    shutil.copyfile(src, final.with_name(final.name + ".part"))
    final.with_name(final.name + ".part").replace(final)
    return final


def delete(name: str, manifest: dict[str, WeightEntry] | None = None) -> bool:
    removed = False
    final = weight_path(name, manifest)
    for p in (final, final.with_name(final.name + ".part")):
        if p.exists():
            p.unlink()
            removed = True
    return removed
