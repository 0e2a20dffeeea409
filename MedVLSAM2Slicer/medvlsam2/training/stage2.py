"""Stage 2 (joint): language loss plus SAM2 segmentation trained end to end through the [SEG] bridge.

The SAM2 forward mirrors inference (``Session.segment_text`` / ``add_points`` / ``propagate``):
- probes: [SEG] tokens decoded on single slices without memory, exactly as key slices are scored
  (``object_score_without_memory``): the object score must separate present from absent slices;
- text clips: the first slice is conditioned on the tokens alone (one padding point, as
  ``add_prompt_tokens``), later slices are tracked with memory and the tokens appended on every slice;
- interactive clips: the first slice gets a GT box or click, then one simulated corrective click
  (fed with the previous low-res mask, as ``add_new_points_or_box`` does), later slices use memory;
  the last tracked slice gets a corrective click of its own (alone, with the tracked mask), as a user's
  click on a propagated slice arrives.

The predictor stays in eval mode so that every code path (multimask choice, memory binarisation of
prompted slices) is the one inference runs; we call its SAM2Base methods with gradients enabled.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .batches import CaseTensors, Clip, StepPlan, seg_pairs
from .losses import multimask_loss
from .stage1 import chat_forward


@torch.no_grad()
def precompute_features(seg, frames: torch.Tensor, chunk: int = 16) -> list[torch.Tensor]:
    """``forward_image`` levels [K, C, h, w] in bf16 for a frozen image encoder (conv_s0/s1 applied)."""
    levels = [seg.forward_image(frames[i:i + chunk].float())["backbone_fpn"] for i in range(0, len(frames), chunk)]
    return [torch.cat([lv[n] for lv in levels]).to(torch.bfloat16) for n in range(len(levels[0]))]


def encode_frames(seg, pool: Sequence[CaseTensors], picks: Sequence[tuple[int, Sequence[int]]], device):
    """SAM2 image features for the (case, slices) ``picks``: (feats, pos, sizes) with feats[i] [HW, N, C].

    Cases with precomputed ``features`` skip the image encoder (it is frozen then)."""
    if pool[picks[0][0]].features is None:
        backbone = seg.forward_image(torch.cat([pool[c].frames[s] for c, s in picks]).to(device).float())
    else:
        fpn = [torch.cat([pool[c].features[n][s] for c, s in picks]).to(device).float()
               for n in range(len(pool[picks[0][0]].features))]
        position = seg.image_encoder.neck.position_encoding  # sine encoding: depends on the map size only
        backbone = {"backbone_fpn": fpn, "vision_pos_enc": [position(x).to(x.dtype) for x in fpn]}
    _, feats, pos, sizes = seg._prepare_backbone_features(backbone)
    return feats, pos, sizes


def _take(levels: list[torch.Tensor], rows: torch.Tensor) -> list[torch.Tensor]:
    return [x[:, rows] for x in levels]


def decode(seg, frame_idx: int, is_cond: bool, feats, pos, sizes, point_inputs, output_dict, num_frames: int,
           prev_low_res: torch.Tensor | None = None):
    """One SAM2 decode (``_track_step``) keeping the candidate masks, IoU predictions and object score."""
    current, sam_out, _, _ = seg._track_step(frame_idx, is_cond, feats, pos, sizes, point_inputs, None, output_dict,
                                             num_frames, False, prev_low_res)
    _, high_multi, ious, low, high, obj_ptr, obj_logits = sam_out
    current.update(pred_masks=low, pred_masks_high_res=high, obj_ptr=obj_ptr, object_score_logits=obj_logits)
    return current, high_multi, ious, obj_logits


def _pad_points(n: int, device) -> dict:
    return {"point_coords": torch.zeros(n, 1, 2, device=device),
            "point_labels": -torch.ones(n, 1, dtype=torch.int32, device=device)}


def gt_prompts(masks: torch.Tensor, kind: str) -> dict:
    """GT-sampled first-slice prompts in SAM2 input pixels: a jittered box (labels 2, 3) or one click."""
    coords, labels = [], []
    for m in masks:
        ys, xs = torch.nonzero(m > 0, as_tuple=True)
        if kind == "box":
            x0, x1, y0, y1 = xs.min().float(), xs.max().float(), ys.min().float(), ys.max().float()
            jitter = torch.randn(4) * 0.05 * torch.stack([x1 - x0 + 1, x1 - x0 + 1, y1 - y0 + 1, y1 - y0 + 1])
            box = torch.stack([x0, y0, x1, y1]) + jitter[[0, 2, 1, 3]]
            coords.append(box.clamp(0, m.shape[-1] - 1).view(2, 2))
            labels.append(torch.tensor([2, 3]))
        else:
            i = int(torch.randint(len(xs), (1,)))
            coords.append(torch.stack([xs[i], ys[i]]).float().view(1, 2))
            labels.append(torch.tensor([1]))
    return {"point_coords": torch.stack(coords), "point_labels": torch.stack(labels).to(torch.int32)}


def corrective_clicks(pred_logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per row in the larger error set (missed object -> positive, false alarm -> negative)."""
    coords, labels = [], []
    for p, m in zip((pred_logits.detach().float().cpu() > 0), masks > 0):
        missed, extra = m & ~p, p & ~m
        positive = missed.sum() >= extra.sum()
        region = missed if positive else extra
        if not region.any():  # no error: a confirming click (positive on the object, negative off an absent one)
            positive = bool(m.any())
            region = m if positive else ~m
        ys, xs = torch.nonzero(region, as_tuple=True)
        i = int(torch.randint(len(xs), (1,)))
        coords.append(torch.stack([xs[i], ys[i]]).float().view(1, 2))
        labels.append(torch.tensor([1 if positive else 0]))
    return torch.stack(coords), torch.stack(labels).to(torch.int32)


def _corrected(seg, t: int, is_init: bool, f, p, sizes, points: dict | None, current: dict, gt_cpu: torch.Tensor,
               out_dict: dict, num_frames: int, device):
    """Add one simulated corrective click to ``points`` (None on a tracked slice: the click alone) and decode
    again with the previous low-res mask, as ``add_new_points_or_box`` does; returns (points, decode outputs)."""
    xy, lab = corrective_clicks(current["pred_masks_high_res"][:, 0], gt_cpu)
    xy, lab = xy.to(device), lab.to(device)
    if points is not None:
        xy, lab = torch.cat([points["point_coords"], xy], 1), torch.cat([points["point_labels"], lab], 1)
    points = {"point_coords": xy, "point_labels": lab}
    return points, decode(seg, t, is_init, f, p, sizes, points, out_dict, num_frames,
                          prev_low_res=current["pred_masks"].detach())


def _clip_losses(seg, pool, clips: Sequence[Clip], device, tokens: torch.Tensor | None, first_prompts: dict | None,
                 correct: bool) -> list[dict[str, torch.Tensor]]:
    """Track ``clips`` (same length) together as one batch; losses per decode."""
    length = len(clips[0].slices)
    gts = torch.stack([pool[c.case].mask(c.target, c.slices) for c in clips])  # [B, T, S, S] cpu
    feats, pos, sizes = encode_frames(seg, pool, [(c.case, c.slices) for c in clips], device)
    num_frames = int(pool[clips[0].case].labels.shape[0])
    out_dict: dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    losses = []
    with seg.extra_prompt_tokens(tokens):
        for t in range(length):
            rows = torch.arange(len(clips), device=device) * length + t
            f, p = _take(feats, rows), _take(pos, rows)
            gt = gts[:, t].to(device)
            points = None
            if t == 0:
                points = first_prompts if first_prompts is not None else _pad_points(len(clips), device)
                points = {k: v.to(device) for k, v in points.items()}
            current, multi, ious, obj = decode(seg, t, t == 0, f, p, sizes, points, out_dict, num_frames)
            losses.append(multimask_loss(multi, ious, obj, gt, every_candidate=tokens is not None))
            # a click on the first slice adds to its prompt; a click on the last (tracked) slice comes alone with
            # the tracked mask and memory, as users correct a propagated slice, which then conditions the slice
            corrected = correct and t == length - 1 and t > 0
            if correct and t == 0 or corrected:
                points, (current, multi, ious, obj) = _corrected(seg, t, t == 0, f, p, sizes, points, current,
                                                                 gts[:, t], out_dict, num_frames, device)
                losses.append(multimask_loss(multi, ious, obj, gt))
            seg._encode_memory_in_output(f, sizes, points, True, current["pred_masks_high_res"],
                                         current["object_score_logits"], current)
            out_dict["cond_frame_outputs" if t == 0 or corrected else "non_cond_frame_outputs"][t] = current
    return losses


def _probe_losses(seg, pool, probes, tokens: torch.Tensor, device) -> dict[str, torch.Tensor]:
    gts = torch.cat([pool[c].mask(t, s) for c, t, s in probes]).to(device)
    counts = torch.tensor([len(s) for _, _, s in probes], device=device)
    feats, pos, sizes = encode_frames(seg, pool, [(c, s) for c, _, s in probes], device)
    num_frames = int(pool[probes[0][0]].labels.shape[0])
    with seg.extra_prompt_tokens(tokens.repeat_interleave(counts, dim=0)):
        _, multi, ious, obj = decode(seg, 0, True, feats, pos, sizes, None,
                                     {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}, num_frames)
    return multimask_loss(multi, ious, obj, gts, every_candidate=True)


def _mean(parts: list[dict[str, torch.Tensor]], prefix: str, into: dict[str, torch.Tensor]) -> torch.Tensor:
    total = torch.stack([p["loss"] for p in parts]).mean()
    for key in ("mask", "object", "iou"):
        into[f"{prefix}_{key}"] = torch.stack([p[key] for p in parts]).mean()
    return total


def stage2_losses(model, pool: Sequence[CaseTensors], plan: StepPlan, device: torch.device,
                  lm_weight: float = 1.0, seg_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Joint loss of one planned step; the dict holds "loss" (with graph) and detached parts for logging."""
    seg = model.segmenter
    rows = seg_pairs(plan) + plan.text
    out = chat_forward(model, pool, rows, device)
    logs: dict[str, torch.Tensor] = {"lm": out.loss.detach()}
    total = lm_weight * out.loss
    seg_terms = []
    if plan.seg:
        clip_rows = out.seg_batch_index < len(plan.seg)  # text rows may hold segmentation requests (LM loss only)
        if int(clip_rows.sum()) != len(plan.seg):
            raise RuntimeError(f"expected {len(plan.seg)} [SEG] states, got {int(clip_rows.sum())}")
        tokens = model.seg_prompt_tokens(out.seg_hidden[clip_rows])  # [n, k, 256]
        seg_terms.append(_mean(_clip_losses(seg, pool, plan.seg, device, tokens, None, False), "text", logs))
        probe = _probe_losses(seg, pool, plan.probes, tokens, device)
        logs.update({f"probe_{k}": v for k, v in probe.items() if k != "loss"})
        seg_terms.append(probe["loss"])
    if plan.interactive:
        prompts = gt_prompts(torch.stack([pool[c.case].mask(c.target, c.slices[:1])[0] for c in plan.interactive]),
                             plan.interactive_kind)
        seg_terms.append(_mean(_clip_losses(seg, pool, plan.interactive, device, None, prompts, True), "click", logs))
    if seg_terms:
        seg_loss = torch.stack(seg_terms).sum()
        logs["seg"] = seg_loss.detach()
        total = total + seg_weight * seg_loss
    logs["loss"] = total
    return logs
