"""Frozen-encoder features of the training cases, encoded once and read back every step (``feature_cache:``).

In the findings stages the 3D vision encoder and SAM2's image encoder stay frozen, yet every step used to run
them again on every volume and planned slice. With ``feature_cache: DIR`` each training case is encoded once:
- the 3D encoder's patch tokens (``MedVLSAM2.encode_patches``: what the projector and the region encoder read);
- SAM2's image features at the levels the decoder and memory attention consume (``num_feature_levels``),
  exactly as ``forward_image`` returns them: the two high-resolution levels already through the mask decoder's
  ``conv_s0`` / ``conv_s1`` (so those two 1x1 projections are cached, and frozen, too), the lowest level as is;
- SAM2's positional encodings, which depend only on the image size: one shared file for the whole cache.
One safetensors file per case (``store_dtype``), listed in ``manifest.json`` under a fingerprint of the
encoder weights (``ENCODED_PARTS``) and of everything else that shapes the features (the vision and segmenter
configs, the store dtype, this file's ``VERSION``). A different fingerprint drops every entry and the cases are
encoded again; each file also carries the fingerprint, so a stale file is never read as current.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..errors import InputError

VERSION = 1
MANIFEST = "manifest.json"
POSITIONS = "positions.safetensors"
# Modules whose outputs the cache holds: frozen while training from it.
ENCODED_PARTS = ("vision_encoder", "segmenter.image_encoder", "segmenter.sam_mask_decoder.conv_s0",
                 "segmenter.sam_mask_decoder.conv_s1")
STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
ENCODE_BATCH = 8  # SAM2 slices per image-encoder call while building


@dataclass
class CachedFeatures:
    """One case's cached encoder outputs for a step: the 3D patch tokens and the planned slices' SAM2 levels."""

    patches: tuple[torch.Tensor, ...]  # [N, C] per encoder output (one for the ViT, two for the DCFormer)
    levels: list[dict[int, torch.Tensor]]  # per SAM2 level: slice -> [C, h, w] (store dtype)
    pos: list[torch.Tensor]  # per level [1, C, h, w], float32

    def backbone(self, slices: Sequence[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(features [n, C, h, w] float32, positions) of ``slices``, as ``forward_image`` returns them."""
        try:
            feats = [torch.stack([level[int(k)] for k in slices]).float() for level in self.levels]
        except KeyError as exc:
            raise KeyError(f"slice {exc} was not planned for this step") from None
        return feats, [p.expand(len(slices), -1, -1, -1) for p in self.pos]


def covers_encoder(part: str) -> bool:
    """Whether a ``trainable`` entry would train a cached encoder (``segmenter`` as a whole included)."""
    return any(e == part or e.startswith(part + ".") or part.startswith(e + ".") for e in ENCODED_PARTS[:2])


def _named_tensors(model) -> Iterator[tuple[str, torch.Tensor]]:
    for part in ENCODED_PARTS:
        module = model.get_submodule(part)
        for name, t in sorted(module.state_dict().items()):
            yield f"{part}.{name}", t


def fingerprint(model, store_dtype: str) -> str:
    """SHA-256 of the encoder weights (names, shapes, dtypes, bytes) and of the settings that shape the features."""
    h = hashlib.sha256()
    settings = {"version": VERSION, "store_dtype": store_dtype, "vision": asdict(model.config.vision),
                "segmenter": {k: v for k, v in asdict(model.config.segmenter).items()
                              if k in ("sam2_config", "image_size", "window", "hydra_overrides")}}
    h.update(json.dumps(settings, sort_keys=True, default=list).encode())
    for name, t in _named_tensors(model):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def entry_key(source_key: str, case_id: str) -> str:
    """The manifest key of one case: its source (reader, path or seeds, shape, spacing) and its id."""
    return hashlib.sha256(f"{source_key}|{case_id}".encode()).hexdigest()[:24]


def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


class TrainFeatureCache:
    """The cache folder for one model's encoders; ``build`` fills it, ``read`` serves a step's slices.

    Picklable (paths and the manifest only), so DataLoader workers read from it too."""

    def __init__(self, root: str | os.PathLike, model, store_dtype: str = "float16") -> None:
        if store_dtype not in STORE_DTYPES:
            raise InputError(f"feature_cache_dtype must be one of {sorted(STORE_DTYPES)}, got {store_dtype!r}")
        self.root, self.store_dtype = Path(root), store_dtype
        self.fingerprint = fingerprint(model, store_dtype)
        self.levels = int(model.segmenter.num_feature_levels)
        self.dropped = 0  # entries of another fingerprint removed when opening
        self._pos: list[torch.Tensor] | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = self._read_manifest()
        if manifest.get("fingerprint") != self.fingerprint:
            self.dropped = self._drop(manifest)
            manifest = {"fingerprint": self.fingerprint, "version": VERSION, "store_dtype": store_dtype,
                        "levels": self.levels, "entries": {}}
            _atomic_json(self.root / MANIFEST, manifest)
        self.entries: dict[str, dict] = manifest["entries"]

    def _read_manifest(self) -> dict:
        path = self.root / MANIFEST
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except ValueError:
            raise InputError(f"{path} is not valid JSON; delete the feature cache folder {self.root}") from None
        return data if isinstance(data, dict) and isinstance(data.get("entries"), dict) else {}

    def _drop(self, manifest: dict) -> int:
        """Remove the files of a stale manifest (only those it lists, and the shared positions)."""
        names = [e.get("file", "") for e in manifest.get("entries", {}).values()] + [POSITIONS]
        for name in names:
            if name and "/" not in name and name.endswith(".safetensors"):
                (self.root / name).unlink(missing_ok=True)
        return len(manifest.get("entries", {}))

    def __contains__(self, key: str) -> bool:
        return key in self.entries and (self.root / self.entries[key]["file"]).is_file()

    # ----- building -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, model, encoder_input: torch.Tensor, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """One case: encoder input [1, D, H, W], SAM2 frames [K, 3, S, S] -> the tensors of its file."""
        device = next(model.parameters()).device
        patches = model.encode_patches(encoder_input[None].to(device).float())
        patches = patches if isinstance(patches, tuple) else (patches,)
        out = {f"patches.{i}": p[0] for i, p in enumerate(patches)}
        seg, levels, positions = model.segmenter, [[] for _ in range(self.levels)], None
        for lo in range(0, frames.shape[0], ENCODE_BATCH):
            backbone = seg.forward_image(frames[lo:lo + ENCODE_BATCH].to(device).float())
            for level, x in zip(levels, backbone["backbone_fpn"][-self.levels:]):
                level.append(x)
            positions = backbone["vision_pos_enc"][-self.levels:]
        out.update({f"fpn.{i}": torch.cat(level) for i, level in enumerate(levels)})
        store = STORE_DTYPES[self.store_dtype]
        out = {k: v.to(store).cpu().contiguous() for k, v in out.items()}
        if not (self.root / POSITIONS).is_file():
            self._save({f"pos.{i}": p[:1].float().cpu().contiguous() for i, p in enumerate(positions)}, POSITIONS)
        return out

    def _save(self, tensors: dict[str, torch.Tensor], name: str) -> None:
        from safetensors.torch import save_file

        tmp = self.root / f".{name}.tmp"
        save_file(tensors, str(tmp), metadata={"fingerprint": self.fingerprint})
        os.replace(tmp, self.root / name)

    def add(self, key: str, case_id: str, tensors: dict[str, torch.Tensor]) -> None:
        name = f"{key}.safetensors"
        self._save(tensors, name)
        self.entries[key] = {"case_id": case_id, "file": name, "slices": int(tensors["fpn.0"].shape[0]),
                             "bytes": (self.root / name).stat().st_size}

    def save_manifest(self) -> None:
        _atomic_json(self.root / MANIFEST, {"fingerprint": self.fingerprint, "version": VERSION,
                                            "store_dtype": self.store_dtype, "levels": self.levels,
                                            "entries": self.entries})

    def build(self, model, data, progress: bool = False) -> dict:
        """Encode every training case of ``data`` (a ``stream.StepData``) that the cache lacks; returns counts."""
        import time

        from tqdm.auto import tqdm

        from ..io.encoder_input import to_encoder_tensor
        from ..io.slices import volume_to_frames

        todo = [(s, i) for s, src in enumerate(data.sources) for i in src.train if data.case_key(s, i) not in self]
        modes = {m: m.training for m in model.modules()}
        model.eval()  # the encoders as inference runs them (and as frozen parts run in training)
        tic, cfg = time.time(), model.config
        try:
            for n, (s, i) in enumerate(tqdm(todo, disable=not progress, desc="feature cache")):
                case = data.case(s, i)
                encoder, _ = to_encoder_tensor(case.volume, cfg.vision.input_size, cfg.vision.window)
                frames = volume_to_frames(case.volume, cfg.segmenter.image_size, cfg.segmenter.window)[0].half()
                self.add(data.case_key(s, i), case.case_id, self.encode(model, encoder[0], frames))
                if n % 16 == 15:
                    self.save_manifest()
        finally:
            for m, training in modes.items():
                m.train(training)
            self.save_manifest()
        sizes = [e["bytes"] for e in self.entries.values()]
        return {"cases": len(self.entries), "encoded": len(todo), "dropped": self.dropped,
                "encode_seconds": round(time.time() - tic, 1),
                "mean_case_mb": round(sum(sizes) / max(1, len(sizes)) / 2**20, 2)}

    # ----- reading --------------------------------------------------------------------------------
    def _open(self, name: str):
        from safetensors import safe_open

        handle = safe_open(str(self.root / name), framework="pt")
        if (handle.metadata() or {}).get("fingerprint") != self.fingerprint:
            raise InputError(f"feature cache file {name} was written for other encoder weights; delete the "
                             f"feature cache folder {self.root} and train again")
        return handle

    def positions(self) -> list[torch.Tensor]:
        """SAM2's positional encodings [1, C, h, w] per level (the same for every slice), read once."""
        if self._pos is None:
            handle = self._open(POSITIONS)
            self._pos = [handle.get_tensor(f"pos.{i}") for i in range(self.levels)]
        return self._pos

    def read(self, key: str, slices: Sequence[int]) -> CachedFeatures:
        """One case's 3D patch tokens and, of its SAM2 levels, only ``slices`` (read from disk lazily)."""
        if key not in self:
            raise InputError(f"the feature cache {self.root} lacks a training case; run training again to encode it")
        handle = self._open(self.entries[key]["file"])
        names = sorted(k for k in handle.keys() if k.startswith("patches."))
        patches = tuple(handle.get_tensor(n) for n in names)
        levels = []
        for i in range(self.levels):
            view = handle.get_slice(f"fpn.{i}")
            levels.append({int(k): view[int(k):int(k) + 1][0] for k in slices})
        return CachedFeatures(patches, levels, self.positions())
