"""Weights manifest, local cache, verified downloads (huggingface_hub) and offline import.

Nothing is downloaded unless a user asks (``medvlsam2 weights download``). Downloads go through
``huggingface_hub`` (resumable, proxy-aware; ``HF_ENDPOINT`` / ``HF_TOKEN`` are honoured). Every file or
folder is checked before it is installed, by ``import`` and ``verify`` too: size and SHA-256 when the
manifest has them, then its content is checked against the entry's architecture (a SAM2 checkpoint loads
strictly into the entry's Hiera size; a Med3DVLM folder has the right ``model_type`` and weight keys).
This module is torch-free until a check needs torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import Cancelled, CheckpointError, InputError
from .resources import resource_path
from .utils.cancel import CancelToken, check

MANIFEST_NAME = "weights_manifest.json"
CHUNK = 1 << 20  # bytes hashed per read


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
    kind: str = "sam2"  # "sam2": one checkpoint file; any other kind (FOLDER_CHECKS): a model folder
    model_type: str | None = None  # folders: config.json's model_type (vlm_qwen, dec_clip)
    image_size: int | None = None  # native SAM2 input size (None: SAM2.1's 1024)
    repo: str | None = None  # Hugging Face repository id the file or folder is downloaded from
    revision: str | None = None  # pinned commit or tag (None: the repository's main branch)
    files: tuple[str, ...] | None = None  # folders: the repository paths to fetch (glob patterns; None: all)
    model_dir: str | None = None  # folders: where the model is inside the fetched tree (None: its top)
    convert: tuple[str, ...] = ()  # pickles in the model folder replaced by .safetensors at install (convert.py)
    gpu_memory: str | None = None  # what inference needs on a GPU, as the model card or our measurement says
    serves: tuple[str, ...] = ()  # actions it serves (clicks, typed prompts, referring, questions, reports)


# Folder kinds -> "module:function" that checks a folder's content against its architecture (keys and shapes).
FOLDER_CHECKS = {"med3dvlm": "medvlsam2.modeling.med3dvlm:check_folder",
                 "voxtell": "medvlsam2.released.voxtell:check_folder",
                 "m3d-lamed": "medvlsam2.released.folders:check_m3d_folder",
                 "segvol": "medvlsam2.released.folders:check_segvol_folder",
                 "text-encoder": None}  # a Hugging Face model folder: config.json's model_type is the check


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
    lists = {"files", "convert", "serves"}
    return {name: WeightEntry(name=name, **{k: tuple(v) if k in lists and v is not None else v
                                            for k, v in e.items() if k in keys}) for name, e in data.items()}


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
    """Where ``name`` is (or would be) installed: a file, or the model folder of a folder entry."""
    entry = _entry(name, manifest)
    return cache_dir() / entry.file / (entry.model_dir or "")


def installed_path(name: str, manifest: dict[str, WeightEntry] | None = None) -> Path:
    """The installed file or folder; ``InputError`` saying how to install it when it is not there."""
    path = weight_path(name, manifest)
    if not path.exists():
        raise InputError(f"{name} is not installed: run `medvlsam2 weights download {name}`, or on an offline machine "
                         f"`medvlsam2 weights import {name} PATH` with the file or folder obtained elsewhere")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(entry: WeightEntry, path: Path) -> str:
    """Raise ``CheckpointError`` unless ``path`` is this entry's weights; return its SHA-256 ("folder" for one)."""
    path = Path(path)
    if entry.kind != "sam2":
        check_hf_folder(entry, path)
        return "folder"
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file; {entry.name} is one checkpoint file ({entry.file})")
    if entry.size is not None and path.stat().st_size != entry.size:
        raise CheckpointError(f"{path.name} has {path.stat().st_size} bytes, the manifest says {entry.size}: "
                              "the file is truncated or a different release")
    digest = sha256_of(path)
    if entry.sha256 and digest != entry.sha256.lower():
        raise CheckpointError(f"{path.name} is corrupted or not the released file: SHA-256 {digest} "
                              f"does not match the manifest's {entry.sha256}")
    if entry.kind == "sam2" and entry.config:
        check_sam2_file(entry, path)
    return digest


def check_sam2_file(entry: WeightEntry, path: Path) -> None:
    """Load ``path`` strictly into the entry's SAM2 architecture (keys and shapes); the mismatch is named."""
    from .config import SegmenterConfig
    from .modeling.segmenter import build_segmenter, infer_sam2_config, read_state_dict, state_dict_mismatch

    sd = read_state_dict(path)
    size = lambda config: "hiera-" + Path(config).stem.rsplit("_", 1)[-1]  # noqa: E731
    try:
        found = infer_sam2_config(sd, path.name)
    except CheckpointError:
        found = None
    if found and found != entry.config:
        raise CheckpointError(f"{path.name} is a SAM2.1 {size(found)} checkpoint, but {entry.name} is {size(entry.config)}: "
                              f"this file belongs to another entry")
    predictor = build_segmenter(SegmenterConfig(sam2_config=entry.config, image_size=entry.image_size or 1024))
    problems = state_dict_mismatch(sd, predictor.state_dict())
    if problems:
        raise CheckpointError(f"{path.name} does not load into {entry.name} ({size(entry.config)}): " + "; ".join(problems))


def check_hf_folder(entry: WeightEntry, path: Path) -> None:
    """A model folder: config.json with the entry's ``model_type`` (when it has one) and safetensors weights whose
    keys and shapes match the architecture it describes (read from the safetensors headers: no 7B load)."""
    import importlib

    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder; {entry.name} is a model folder ({entry.file})")
    if entry.kind not in FOLDER_CHECKS:
        raise CheckpointError(f"{entry.name} has kind {entry.kind!r}, which this version cannot check; update medvlsam2")
    if entry.model_type or not FOLDER_CHECKS[entry.kind]:
        _check_model_type(entry, path)
    if FOLDER_CHECKS[entry.kind]:
        module, function = FOLDER_CHECKS[entry.kind].split(":")
        getattr(importlib.import_module(module), function)(path)  # every tensor's key and shape


def _check_model_type(entry: WeightEntry, path: Path) -> None:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} has no readable config.json ({exc}); is it the {entry.name} folder?") from None
    if entry.model_type and config.get("model_type") != entry.model_type:
        raise CheckpointError(f"{path.name}/config.json has model_type {config.get('model_type')!r}; {entry.name} "
                              f"needs {entry.model_type!r}")
    if not any(path.glob("*.safetensors")):
        raise CheckpointError(f"{path.name} has no .safetensors weights; {entry.name} is read from safetensors only")


def list_weights(manifest: dict[str, WeightEntry] | None = None) -> list[dict]:
    manifest = manifest if manifest is not None else load_manifest()
    return [{"name": e.name, "installed": weight_path(e.name, manifest).exists(), "license": e.license,
             "kind": e.kind, "size": e.size, "sha256": e.sha256 or "unknown", "url": e.url, "repo": e.repo,
             "gpu_memory": e.gpu_memory, "serves": list(e.serves)} for e in manifest.values()]


def _progress_class(progress: Callable[[int, int | None], None] | None, cancel: CancelToken | None):
    """A tqdm class for huggingface_hub: shows a bar, reports bytes to ``progress`` and honours ``cancel``."""
    from tqdm.auto import tqdm

    class Progress(tqdm):
        # Counts on its own: a disabled tqdm (TQDM_DISABLE, no terminal) keeps no n/total/unit.
        def __init__(self, *args, **kwargs):
            self._bytes = kwargs.get("unit") == "B"
            self._total, self._done = kwargs.get("total"), 0
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            check(cancel)  # raising here stops the download; huggingface_hub resumes it next time
            self._done += n or 0
            if progress and self._bytes:
                progress(int(self._done), int(self._total) if self._total else None)
            return super().update(n)

    return Progress


def download(name: str, progress: Callable[[int, int | None], None] | None = None,
             cancel: CancelToken | None = None, manifest: dict[str, WeightEntry] | None = None) -> Path:
    """Download from the entry's Hugging Face repository (resumable, cached), verify, then install."""
    import huggingface_hub

    entry = _entry(name, manifest)
    if not entry.repo:
        raise InputError(f"{name} has no download repository; import the file with `medvlsam2 weights import {name} FILE`")
    staging = cache_dir() / ".download" / name  # huggingface_hub keeps partial files here for resuming
    tqdm_class = _progress_class(progress, cancel)
    try:
        if entry.kind != "sam2":
            got = huggingface_hub.snapshot_download(entry.repo, revision=entry.revision, local_dir=staging,
                                                    allow_patterns=list(entry.files) if entry.files else None,
                                                    tqdm_class=tqdm_class)
        else:
            got = huggingface_hub.hf_hub_download(entry.repo, entry.file, revision=entry.revision, local_dir=staging,
                                                  tqdm_class=tqdm_class)
    except Cancelled:
        raise
    except Exception as exc:  # network, proxy, auth, missing file: huggingface_hub's own error types
        raise CheckpointError(f"download of {name} from huggingface.co/{entry.repo} failed ({type(exc).__name__}: "
                              f"{str(exc)[:300]}); run the command again to resume, or obtain it by other means"
                              f"{f' ({entry.url})' if entry.url else ''} and run `medvlsam2 weights import {name} PATH`") from None
    return _install(entry, Path(got), move=True)


def import_file(name: str, source: str | os.PathLike, manifest: dict[str, WeightEntry] | None = None) -> Path:
    """Offline sites: copy a file (or model folder) obtained by other means into the cache after verifying it."""
    entry = _entry(name, manifest)
    src = Path(source)
    if not src.exists():
        raise InputError(f"no such file or folder: {src}")
    if entry.model_dir and src.is_dir() and not (src / entry.model_dir).is_dir():
        src = _as_tree(entry, src)  # the model folder itself was given: place it where the tree has it
    return _install(entry, src, move=False)  # verified in its staging copy, before it replaces anything


def _as_tree(entry: WeightEntry, model_folder: Path) -> Path:
    """A staging tree holding ``model_folder`` at ``entry.model_dir`` (links, nothing copied yet)."""
    tree = cache_dir() / ".import" / entry.name
    _remove(tree)
    (tree / entry.model_dir).parent.mkdir(parents=True)
    (tree / entry.model_dir).symlink_to(model_folder.resolve(), target_is_directory=True)
    return tree


def _install(entry: WeightEntry, src: Path, move: bool) -> Path:
    """Put ``src`` at the entry's place atomically (a ``.part`` copy renamed), replacing an older install. Pickles
    the entry lists are converted to .safetensors (and removed) in the copy; the copy is verified before the rename."""
    final = cache_dir() / entry.file
    part = final.with_name(final.name + ".part")
    _remove(part)
    try:
        if move:
            shutil.move(str(src), part)
        elif src.is_dir():
            shutil.copytree(src, part, symlinks=False, ignore=shutil.ignore_patterns(".cache"))
        else:
            shutil.copyfile(src, part)
        model = part / (entry.model_dir or "") if part.is_dir() else part
        for pickle_path in entry.convert:
            _convert_in_place(model / pickle_path)
        verify_file(entry, model)
    except BaseException:
        _remove(part)
        raise
    finally:
        _remove(cache_dir() / ".import" / entry.name)
    _remove(final)
    part.replace(final)
    return final / (entry.model_dir or "")


def _convert_in_place(path: Path) -> None:
    """``path`` (a released pickle) -> .safetensors beside it (weights only; see ``convert``), then removed."""
    from .convert import convert, default_output

    if path.is_file():
        if not default_output(path).is_file():
            convert(path)
        path.unlink()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def delete(name: str, manifest: dict[str, WeightEntry] | None = None) -> bool:
    """Remove the installed file or folder and any partial download; False when there was nothing."""
    removed = False
    final = cache_dir() / _entry(name, manifest).file
    for p in (final, final.with_name(final.name + ".part"), cache_dir() / ".download" / name):
        if p.exists():
            _remove(p)
            removed = True
    return removed
