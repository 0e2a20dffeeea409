"""SAM2 volumetric segmenter built from the ``sam2`` package's own configs: axial slices are frames.

``SAM2VolumePredictor`` is upstream's ``SAM2VideoPredictor`` plus three things:
- frames come from memory (a CT volume), not a JPEG folder;
- per-slice image features live in the Session's ``FeatureCache`` (shared by all objects of a volume,
  bounded in megabytes, bf16, positional encodings once per size), so refinement and re-propagation
  never re-run the image encoder on a slice the budget still holds;
- ``extra_prompt_tokens`` appends the language model's ``[SEG]`` prompt tokens to SAM2's sparse
  prompt embeddings through a forward hook, which keeps official state-dict keys unchanged.

This module is the one adapter to ``sam2``'s internals (its private ``_`` methods and state layout): the rest of
the engine, training included, calls the public methods below. ``Testing/Python/test_upstream_parity.py`` checks it
against upstream, and ``medvlsam2/requirements.txt`` pins sam2 to the version those tests pass on.
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
from .feature_cache import ComputeGate, FeatureCache, SliceFeatures

DIRECTIONS = {"forward": (False,), "backward": (True,), "both": (False, True)}
MASK_LOGIT = 10.0  # a confident mask logit, for SAM2 logits made to agree with a mask the Session kept


def _memory_in_compute_dtype(module, args, kwargs):
    """Memory attention's inputs in the dtype of the current slice's features.

    Upstream stores every slice's memory in bf16 and relies on CUDA autocast; in fp32 (a CPU) a memory made of
    those alone (no fp32 object pointer concatenated to it) reached a fp32 linear layer and raised.
    """
    curr = kwargs["curr"]  # sam2_base passes every input by keyword
    dtype = (curr[0] if isinstance(curr, list) else curr).dtype
    for key in ("memory", "memory_pos"):
        if kwargs.get(key) is not None:
            kwargs[key] = kwargs[key].to(dtype)  # a no-op when it already has that dtype
    return args, kwargs


class SAM2VolumePredictor(SAM2VideoPredictor):
    """SAM2 video predictor over the slices of one CT volume (see module docstring)."""

    def __init__(self, *args, cache_mb: float = 2048, cache_dtype: torch.dtype = torch.bfloat16, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cache_mb = cache_mb  # default budget of a Session's FeatureCache
        self.cache_dtype = cache_dtype  # features are stored in this dtype and restored for compute
        self.gate = ComputeGate()  # orders foreground and background model work of all Sessions
        self.precision = "auto"  # Sessions run model calls under this autocast (utils.device.autocast_dtype)
        self.config = SegmenterConfig()  # propagation settings (stop, settle, prefetch); build_segmenter sets its own
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        self._extra_tokens: torch.Tensor | None = None
        self.sam_prompt_encoder.register_forward_hook(self._append_extra_tokens)
        self.memory_attention.register_forward_pre_hook(_memory_in_compute_dtype, with_kwargs=True)

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

    @contextlib.contextmanager
    def ungated_masks(self):
        """Within the block, the list yielded collects (candidate logits [B, M, h, w], predicted IoUs [B, M]) of every
        decode, before SAM2 blanks the slices it scores absent (``NO_OBJ_SCORE``, which carries no gradient): training
        can then teach a mask while the object score still says "absent", and a gate other than 0 can be applied."""
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        handle = self.sam_mask_decoder.register_forward_hook(lambda module, args, out: seen.append((out[0], out[1])))
        try:
            yield seen
        finally:
            handle.remove()

    # ----- frames and features ---------------------------------------------------------------
    def init_volume_state(self, frames: torch.Tensor, orig_hw: tuple[int, int], cache: FeatureCache | None = None) -> dict:
        """Upstream's inference state over in-memory frames [K, 3, S, S] (same keys as ``init_state``).

        Built here rather than through ``init_state``, which reads frames from a folder through a module
        global we would have to swap (unsafe while another thread builds a state). ``cache`` holds the
        per-slice features; states of one volume share it (a new one is made if None).
        """
        if frames.dim() != 4 or frames.shape[1] != 3 or frames.shape[-1] != self.image_size:
            raise InputError(f"frames must be [K, 3, {self.image_size}, {self.image_size}], got {tuple(frames.shape)}")
        return {
            "images": frames, "num_frames": len(frames), "offload_video_to_cpu": False, "offload_state_to_cpu": False,
            "video_height": int(orig_hw[0]), "video_width": int(orig_hw[1]), "device": self.device,
            "storage_device": self.device, "point_inputs_per_obj": {}, "mask_inputs_per_obj": {},
            "cached_features": {}, "constants": {}, "obj_id_to_idx": OrderedDict(), "obj_idx_to_id": OrderedDict(),
            "obj_ids": [], "output_dict_per_obj": {}, "temp_output_dict_per_obj": {}, "frames_tracked_per_obj": {},
            "feature_cache": cache if cache is not None else FeatureCache(self.cache_mb),
        }

    def _shared_pos(self, pos: torch.Tensor) -> torch.Tensor:
        # SAM2's sine positional encodings depend only on the feature-map size: keep one copy per size.
        key = (tuple(pos.shape), pos.dtype, pos.device)
        return self._pos_cache.setdefault(key, pos)

    @torch.inference_mode()
    def encode_slices(self, state: dict, ks: list[int]) -> None:
        """Run the image encoder on slices ``ks`` as one batch and store them in the state's cache."""
        cache: FeatureCache = state["feature_cache"]
        images = state["images"][list(ks)].to(state["device"]).float()
        out = self.forward_image(images)
        for b, k in enumerate(ks):
            fpn = [f[b:b + 1].to(self.cache_dtype) for f in out["backbone_fpn"]]
            pos = [self._shared_pos(p[b:b + 1]) for p in out["vision_pos_enc"]]
            cache.put(int(k), SliceFeatures(fpn, pos, out["backbone_fpn"][0].dtype,
                                            sum(t.numel() * t.element_size() for t in fpn)))
        cache.encoder_calls += len(ks)

    def _get_image_feature(self, inference_state, frame_idx, batch_size):
        # Same result as upstream's, read from the Session's cache (upstream keeps only the last frame).
        cache: FeatureCache = inference_state["feature_cache"]
        entry = cache.get(int(frame_idx))
        if entry is None:
            self.encode_slices(inference_state, [int(frame_idx)])
            entry = cache.get(int(frame_idx))
        image = inference_state["images"][frame_idx].unsqueeze(0)  # returned for upstream's signature, unused
        backbone_out = {"backbone_fpn": [f.to(entry.dtype).expand(batch_size, -1, -1, -1) for f in entry.fpn],
                        "vision_pos_enc": [p.expand(batch_size, -1, -1, -1) for p in entry.pos]}
        return (image.expand(batch_size, -1, -1, -1),) + self._prepare_backbone_features(backbone_out)

    # ----- training: one decode with gradients, upstream's training-time steps ---------------------
    def backbone_features(self, backbone_out: dict) -> tuple:
        """(backbone_out, feats, pos, sizes) of ``forward_image``'s output, flattened as the decoder takes them."""
        return self._prepare_backbone_features(backbone_out)

    def decode_step(self, frame_idx: int, is_cond: bool, feats, pos, sizes, point_inputs, output_dict,
                    num_frames: int) -> tuple:
        """Upstream's ``_track_step`` (memory-conditioned decode, no memory encoding): (current, sam outputs,
        high-res features, memory-conditioned features)."""
        return self._track_step(frame_idx, is_cond, feats, pos, sizes, point_inputs, None, output_dict, num_frames,
                                False, None)

    def decode_again(self, pix_feat, points: dict, mask_inputs, high_res) -> tuple:
        """Decode a slice again from its memory-conditioned features with new clicks and a mask input, as
        ``add_new_points_or_box`` does; upstream's SAM head outputs."""
        return self._forward_sam_heads(backbone_features=pix_feat, point_inputs=points, mask_inputs=mask_inputs,
                                       high_res_features=high_res, multimask_output=self._use_multimask(False, points))

    def remember(self, feats, sizes, points, current: dict) -> None:
        """Encode the decoded slice ``current`` into memory (upstream's ``_encode_memory_in_output``) so later slices
        attend to it."""
        self._encode_memory_in_output(feats, sizes, points, True, current["pred_masks_high_res"],
                                      current["object_score_logits"], current)

    # ----- decoding helpers ------------------------------------------------------------------
    def _decode_alone(self, state: dict, frame_idx: int) -> dict:
        # one slice decoded with the current extra prompt tokens only: no clicks, no memory
        _, _, feats, pos, sizes = self._get_image_feature(state, frame_idx, batch_size=1)
        return self.track_step(frame_idx=frame_idx, is_init_cond_frame=True, current_vision_feats=feats,
                               current_vision_pos_embeds=pos, feat_sizes=sizes, point_inputs=None, mask_inputs=None,
                               output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
                               num_frames=state["num_frames"], run_mem_encoder=False)

    @torch.inference_mode()
    def object_score_without_memory(self, state: dict, frame_idx: int) -> float:
        """SAM2's object-score logit for the current prompts on one slice, decoded without memory."""
        return float(self._decode_alone(state, frame_idx)["object_score_logits"].flatten()[0])

    @torch.inference_mode()
    def decode_tokens_without_memory(self, state: dict, frame_idx: int) -> tuple[torch.Tensor, float]:
        """(mask logits [H, W] at the original slice size, object-score logit) of the current prompt tokens
        on one slice, decoded without memory (``SegmenterConfig.text_decoding`` "slices"). The logits are SAM2's chosen
        candidate (highest predicted IoU) before it blanks a slice it scores absent: the caller's gate decides."""
        with self.ungated_masks() as raw:
            out = self._decode_alone(state, frame_idx)
        candidates, ious = raw[-1]
        chosen = candidates[:, ious[0].argmax()][:, None] if candidates.shape[1] > 1 else candidates
        _, masks = self._get_orig_video_res_output(state, chosen.float())
        return masks[0, 0], float(out["object_score_logits"].flatten()[0])

    @torch.inference_mode()
    def decode_without_memory(self, state: dict, frame_idx: int, box=None, points=(), labels=()
                              ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """SAM2's candidate masks for an optional box (i0, j0, i1, j1) and clicks (x=i, y=j; labels 1 / 0), in slice
        pixels, on one slice, decoded without memory as a first prompt is: (candidate logits [C, H, W] at the
        original slice size, predicted IoUs [C], object-score logit). C = 3 (multimask), so the caller can pick
        the candidate that continues its neighbour slice or obeys the clicks."""
        _, _, feats, pos, sizes = self._get_image_feature(state, frame_idx, batch_size=1)
        scale = torch.tensor([state["video_width"], state["video_height"]], dtype=torch.float32, device=self.device)
        corners = [] if box is None else [[box[0], box[1]], [box[2], box[3]]]
        xy = torch.tensor([*corners, *points], dtype=torch.float32, device=self.device).reshape(-1, 2)
        if len(xy) == 0:
            raise ValueError("decode_without_memory needs a box or at least one click")
        points = {"point_coords": (xy / scale * self.image_size)[None],  # SAM2's box labels 2, 3 come first
                  "point_labels": torch.tensor([[2, 3][:len(corners)] + list(labels)], dtype=torch.int32,
                                               device=self.device)}
        high_res = [x.permute(1, 2, 0).view(x.size(1), x.size(2), *size) for x, size in zip(feats[:-1], sizes[:-1])]
        pix_feat = self._prepare_memory_conditioned_features(
            frame_idx=frame_idx, is_init_cond_frame=True, current_vision_feats=feats[-1:],
            current_vision_pos_embeds=pos[-1:], feat_sizes=sizes[-1:],
            output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}, num_frames=state["num_frames"],
            track_in_reverse=False)
        low_multi, _, ious, _, _, _, score = self._forward_sam_heads(
            backbone_features=pix_feat, point_inputs=points, mask_inputs=None, high_res_features=high_res or None,
            multimask_output=True)
        _, masks = self._get_orig_video_res_output(state, low_multi.transpose(0, 1))
        return masks[:, 0], ious[0], float(score.flatten()[0])

    @staticmethod
    def _stored_output(state: dict, frame_idx: int, obj_id: int = 1) -> dict | None:
        """The most recent output SAM2 holds for a slice (upstream's lookup order), or None."""
        idx = state["obj_id_to_idx"].get(obj_id)
        if idx is None:
            return None
        outputs, temp = state["output_dict_per_obj"][idx], state["temp_output_dict_per_obj"][idx]
        for store in (temp["cond_frame_outputs"], temp["non_cond_frame_outputs"], outputs["cond_frame_outputs"],
                      outputs["non_cond_frame_outputs"]):
            if frame_idx in store:
                return store[frame_idx]
        return None

    def object_score(self, state: dict, frame_idx: int, obj_id: int = 1) -> float | None:
        """Object-score logit stored for a tracked or prompted slice (None if never decoded)."""
        out = self._stored_output(state, frame_idx, obj_id)
        if out is None or out.get("object_score_logits") is None:
            return None
        return float(out["object_score_logits"].flatten()[0])

    def _low_res(self, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A binary slice mask [H, W] resampled to SAM2's low-res logit grid of ``like`` [1, 1, h, w]."""
        m = mask.to(device=like.device, dtype=torch.float32)[None, None]
        return torch.nn.functional.interpolate(m, size=like.shape[-2:], mode="area") > 0.5

    @torch.inference_mode()
    def set_slice_mask(self, state: dict, frame_idx: int, mask: torch.Tensor, obj_id: int = 1) -> None:
        """Make SAM2's stored logits on a slice agree with ``mask`` [H, W] (bool), so its memory carries it.

        Call it on a slice just prompted (its output waits, memory not yet encoded, until propagation).

        Where the sign of the stored low-res logit disagrees with the mask it is set to +-``MASK_LOGIT``;
        the object score takes the mask's sign (an empty mask is "no object").
        """
        out = self._stored_output(state, frame_idx, obj_id)
        if out is None or out.get("pred_masks") is None:
            return
        logits = out["pred_masks"]
        target = self._low_res(mask, logits)
        wrong = (logits > 0) != target
        if wrong.any():
            out["pred_masks"] = torch.where(wrong, torch.where(target, MASK_LOGIT, -MASK_LOGIT).to(logits.dtype), logits)
        score = out.get("object_score_logits")
        if score is not None and bool(mask.any()) != bool((score > 0).all()):
            out["object_score_logits"] = score.abs().clamp(min=1.0) * (1.0 if mask.any() else -1.0)

    @contextlib.contextmanager
    def seed_slice_mask(self, state: dict, frame_idx: int, mask: torch.Tensor | None, obj_id: int = 1):
        """Within the block a slice SAM2 never decoded offers ``mask`` [H, W] as the previous mask of a click.

        Upstream feeds a slice's previous low-res logits to the decoder with a new click; after an undo
        (state rebuilt from prompts) SAM2 no longer holds them, while the Session still shows the mask.
        """
        idx = state["obj_id_to_idx"].get(obj_id)
        if mask is None or idx is None or not bool(mask.any()) or self._stored_output(state, frame_idx, obj_id):
            yield
            return
        size = self.image_size // 4  # SAM2's low-res mask grid
        grid = torch.empty(1, 1, size, size, device=self.device)
        seeded = torch.where(self._low_res(mask, grid), MASK_LOGIT, -MASK_LOGIT)
        store = state["output_dict_per_obj"][idx]["non_cond_frame_outputs"]
        store[frame_idx] = {"pred_masks": seeded}
        try:
            yield
        finally:
            store.pop(frame_idx, None)

    @staticmethod
    def forget_slices(state: dict, ks, obj_id: int = 1) -> None:
        """Drop SAM2's tracked (non-conditioning) outputs on slices ``ks``: the object has ended there."""
        idx = state["obj_id_to_idx"].get(obj_id)
        if idx is None:
            return
        tracked, outputs = state["frames_tracked_per_obj"][idx], state["output_dict_per_obj"][idx]
        for k in ks:
            if k not in outputs["cond_frame_outputs"]:
                outputs["non_cond_frame_outputs"].pop(k, None)
                tracked.pop(k, None)

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
    predictor.config = cfg
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
