"""SAM2 volumetric segmenter built from the ``sam2`` package's own configs: axial slices are frames.

``SAM2VolumePredictor`` is upstream's ``SAM2VideoPredictor`` plus three things:
- frames come from memory (a CT volume), not a JPEG folder;
- per-slice image features live in an LRU cache shared by all objects of a volume, bounded in
  megabytes and stored in bf16 (positional encodings once per size), so refinement and
  re-propagation never re-run the image encoder on a slice the budget still holds;
- ``extra_prompt_tokens`` appends the language model's ``[SEG]`` prompt tokens to SAM2's sparse
  prompt embeddings through a forward hook, which keeps official state-dict keys unchanged.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import torch
from sam2.sam2_video_predictor import SAM2VideoPredictor

from ..config import SegmenterConfig
from ..errors import CheckpointError, InputError
from ..utils.cancel import CancelToken, check

DIRECTIONS = {"forward": (False,), "backward": (True,), "both": (False, True)}


class SAM2VolumePredictor(SAM2VideoPredictor):
    """SAM2 video predictor over the slices of one CT volume (see module docstring)."""

    def __init__(self, *args, cache_mb: float = 2048, cache_dtype: torch.dtype = torch.bfloat16, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cache_mb = cache_mb  # budget of ``feature_cache``; least recently used slices are evicted first
        self.cache_dtype = cache_dtype  # features are stored in this dtype and restored for compute
        self.feature_cache: OrderedDict[tuple[int, int], tuple] = OrderedDict()
        self.cached_bytes = 0
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        self.encoder_calls = 0
        self._extra_tokens: torch.Tensor | None = None
        self.sam_prompt_encoder.register_forward_hook(self._append_extra_tokens)

    # ----- prompt tokens from the language model --------------------------------------------
    def _append_extra_tokens(self, module, inputs, output):
        if self._extra_tokens is None:
            return output
        sparse, dense = output
        tokens = self._extra_tokens.to(device=sparse.device, dtype=sparse.dtype)
        tokens = tokens.expand(sparse.shape[0], -1, -1)
        return torch.cat([sparse, tokens], dim=1), dense

    @contextlib.contextmanager
    def extra_prompt_tokens(self, tokens: torch.Tensor | None):
        """Within the block every mask decode also sees ``tokens`` [1, n, 256] as sparse prompts."""
        if tokens is not None and (tokens.dim() != 3 or tokens.shape[-1] != self.sam_prompt_embed_dim):
            raise InputError(f"prompt tokens must have shape [1, n, {self.sam_prompt_embed_dim}], got {tuple(tokens.shape)}")
        previous, self._extra_tokens = self._extra_tokens, tokens
        try:
            yield
        finally:
            self._extra_tokens = previous

    # ----- frames and features ---------------------------------------------------------------
    @torch.inference_mode()
    def init_volume_state(self, frames: torch.Tensor, orig_hw: tuple[int, int]) -> dict:
        """Upstream ``init_state`` over in-memory frames [K, 3, S, S]; one state per object, frames shared."""
        import sam2.sam2_video_predictor as upstream

        if frames.dim() != 4 or frames.shape[1] != 3 or frames.shape[-1] != self.image_size:
            raise InputError(f"frames must be [K, 3, {self.image_size}, {self.image_size}], got {tuple(frames.shape)}")
        original = upstream.load_video_frames
        upstream.load_video_frames = lambda **_: (frames, int(orig_hw[0]), int(orig_hw[1]))
        try:
            return self.init_state(video_path="<in-memory volume>")
        finally:
            upstream.load_video_frames = original

    def _shared_pos(self, pos: torch.Tensor) -> torch.Tensor:
        # SAM2's sine positional encodings depend only on the feature-map size: keep one copy per size.
        key = (tuple(pos.shape), pos.dtype, pos.device)
        return self._pos_cache.setdefault(key, pos)

    def _get_image_feature(self, inference_state, frame_idx, batch_size):
        key = (id(inference_state["images"]), int(frame_idx))
        entry = self.feature_cache.get(key)
        if entry is None:
            image = inference_state["images"][frame_idx].to(inference_state["device"]).float().unsqueeze(0)
            out = self.forward_image(image)
            fpn = [f.to(self.cache_dtype) for f in out["backbone_fpn"]]
            entry = (image, fpn, [self._shared_pos(p) for p in out["vision_pos_enc"]], out["backbone_fpn"][0].dtype,
                     sum(t.numel() * t.element_size() for t in [image, *fpn]))
            self.encoder_calls += 1
            self.feature_cache[key] = entry
            self.cached_bytes += entry[-1]
            while self.cached_bytes > self.cache_mb * 2**20 and len(self.feature_cache) > 1:
                self.cached_bytes -= self.feature_cache.popitem(last=False)[1][-1]
        else:
            self.feature_cache.move_to_end(key)
        image, fpn, pos, dtype, _ = entry
        backbone_out = {"backbone_fpn": [f.to(dtype) for f in fpn], "vision_pos_enc": list(pos)}
        # Let upstream expand to the batch and prepare features from a one-entry cache.
        inference_state["cached_features"] = {frame_idx: (image, backbone_out)}
        return super()._get_image_feature(inference_state, frame_idx, batch_size)

    def clear_feature_cache(self) -> None:
        self.feature_cache.clear()
        self.cached_bytes = 0

    # ----- decoding helpers ------------------------------------------------------------------
    @torch.inference_mode()
    def object_score_without_memory(self, state: dict, frame_idx: int) -> float:
        """SAM2's object-score logit for the current prompts on one slice, decoded without memory."""
        _, _, feats, pos, sizes = self._get_image_feature(state, frame_idx, batch_size=1)
        out = self.track_step(frame_idx=frame_idx, is_init_cond_frame=True, current_vision_feats=feats,
                              current_vision_pos_embeds=pos, feat_sizes=sizes, point_inputs=None, mask_inputs=None,
                              output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
                              num_frames=state["num_frames"], run_mem_encoder=False)
        return float(out["object_score_logits"].flatten()[0])

    def object_score(self, state: dict, frame_idx: int, obj_id: int = 1) -> float | None:
        """Object-score logit stored for a tracked or prompted slice (None if never decoded)."""
        idx = state["obj_id_to_idx"].get(obj_id)
        if idx is None:
            return None
        outputs = state["output_dict_per_obj"][idx]
        temp = state["temp_output_dict_per_obj"][idx]
        for store in (temp["cond_frame_outputs"], outputs["cond_frame_outputs"], outputs["non_cond_frame_outputs"]):
            if frame_idx in store and store[frame_idx].get("object_score_logits") is not None:
                return float(store[frame_idx]["object_score_logits"].flatten()[0])
        return None

    @torch.inference_mode()
    def add_prompt_tokens(self, state: dict, frame_idx: int, obj_id: int, tokens: torch.Tensor):
        """Condition ``frame_idx`` on ``[SEG]`` tokens alone (a padding point, label -1, carries no position)."""
        with self.extra_prompt_tokens(tokens):
            return self.add_new_points_or_box(state, frame_idx, obj_id, points=[[0.0, 0.0]], labels=[-1])

    @torch.inference_mode()
    def propagate(self, state: dict, start_frame: int | None = None, direction: str = "both",
                  max_frames: int | None = None, cancel: CancelToken | None = None
                  ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (slice index, mask logits [H, W] at the original slice size) slice by slice.

        ``direction``: forward (increasing k), backward or both. ``cancel`` is checked between slices.
        """
        if direction not in DIRECTIONS:
            raise InputError(f"direction must be one of {sorted(DIRECTIONS)}, got {direction!r}")
        for reverse in DIRECTIONS[direction]:
            for frame_idx, _obj_ids, masks in self.propagate_in_video(state, start_frame_idx=start_frame,
                                                                      max_frame_num_to_track=max_frames,
                                                                      reverse=reverse):
                check(cancel)
                yield frame_idx, masks[0, 0]


def build_segmenter(cfg: SegmenterConfig, device: str | torch.device = "cpu") -> SAM2VolumePredictor:
    """Build a randomly initialised SAM2.1 volume predictor for ``cfg``; load weights with ``load_sam2_checkpoint``."""
    from sam2.build_sam import build_sam2_video_predictor

    overrides = [f"++model._target_={SAM2VolumePredictor.__module__}.{SAM2VolumePredictor.__name__}",
                 f"++model.image_size={cfg.image_size}", *cfg.hydra_overrides]
    predictor = build_sam2_video_predictor(cfg.sam2_config, ckpt_path=None, device=str(device), mode="eval",
                                           hydra_overrides_extra=overrides)
    predictor.fill_hole_area = 0  # needs the sam2._C CUDA extension, which CPU installs lack
    # See SegmenterConfig.corrections_as_conditioning (upstream's default is False).
    predictor.add_all_frames_to_correct_as_cond = cfg.corrections_as_conditioning
    if cfg.checkpoint:
        load_sam2_checkpoint(predictor, cfg.checkpoint)
    return predictor


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an official SAM2 ``{"model": state_dict}`` .pt (no unpickling of objects) or a .safetensors file."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {p} is missing or empty; download it with `medvlsam2 weights` or import it")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{p.name} is not a valid safetensors file ({exc})") from None
    try:
        data = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{p.name} contains non-tensor objects or is not a PyTorch checkpoint; refusing to unpickle "
                              f"it. Use an official SAM2.1/MedSAM2 .pt or a .safetensors file ({type(exc).__name__})") from None
    sd = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{p.name} is not a SAM2 checkpoint: expected {{'model': state_dict}} of tensors")
    return sd


def load_sam2_checkpoint(predictor: torch.nn.Module, path: str | os.PathLike) -> None:
    """Strictly load SAM2 weights from a file; see ``load_sam2_state_dict``."""
    load_sam2_state_dict(predictor, read_state_dict(path), Path(path).name)


def state_dict_mismatch(sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> list[str]:
    """What differs between a file's state dict and a model's (keys, shapes); empty when they match."""
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(sd) & set(own)) if sd[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es), e.g. {shapes[:2]}")
    return problems


def load_sam2_state_dict(predictor: torch.nn.Module, sd: dict[str, torch.Tensor], name: str) -> None:
    """Strictly load SAM2 weights; missing/unexpected keys or shape mismatches raise ``CheckpointError`` naming them."""
    problems = state_dict_mismatch(sd, predictor.state_dict())
    if problems:
        raise CheckpointError(f"{name} does not match this SAM2 architecture: " + "; ".join(problems)
                              + ". Pick the config (hiera t/s/b+/l) the checkpoint was trained with")
    predictor.load_state_dict(sd, strict=True)


# Hiera trunk width and block count of each SAM2.1 size (the sam2 package's configs).
HIERA_SIZES = {(96, 12): "configs/sam2.1/sam2.1_hiera_t.yaml", (96, 16): "configs/sam2.1/sam2.1_hiera_s.yaml",
               (112, 24): "configs/sam2.1/sam2.1_hiera_b+.yaml", (144, 48): "configs/sam2.1/sam2.1_hiera_l.yaml"}


def infer_sam2_config(sd: dict[str, torch.Tensor], name: str = "checkpoint") -> str:
    """The sam2 config (hiera t/s/b+/l) of an official state dict, from its trunk width and block count."""
    width_key = "image_encoder.trunk.patch_embed.proj.weight"
    if width_key not in sd:
        raise CheckpointError(f"{name} is not a SAM2 checkpoint: it has no {width_key} (SAM2's Hiera image encoder)")
    blocks = {k.split(".")[3] for k in sd if k.startswith("image_encoder.trunk.blocks.")}
    key = (int(sd[width_key].shape[0]), len(blocks))
    if key not in HIERA_SIZES:
        raise CheckpointError(f"{name} has a Hiera trunk of width {key[0]} with {key[1]} blocks, which is none of "
                              "SAM2.1 tiny (96, 12), small (96, 16), base-plus (112, 24) or large (144, 48)")
    return HIERA_SIZES[key]
