"""Stage 2 (joint): language loss plus SAM2 segmentation trained end to end through the [SEG] bridge.

The SAM2 forward mirrors inference (``Session.segment_text`` / ``add_points`` / ``propagate``):
- probes: [SEG] tokens decoded on single slices without memory, exactly as key slices are scored
  (``object_score_without_memory``): the object score must separate present from absent slices;
- text clips: the first slice is conditioned on the tokens alone (one padding point, as
  ``add_prompt_tokens``), later slices are tracked with memory and the tokens appended on every slice;
- interactive clips (SAM2's own recipe, ``batches.ClickSchedule``): the first slice gets a noised GT box or
  a click inside the object (``sam2_utils.sample_box_points`` / ``get_next_point``), then 0..N corrective
  clicks, each at a random pixel of the current error (``get_next_point(..., "uniform")``: a negative click
  on a false positive, a positive one on a miss) and decoded with the previous low-res mask logits as mask
  input, as ``add_new_points_or_box`` does; later slices use memory, and some tracked slices get 1..N
  corrective clicks of their own (with the tracked mask and memory, as a user's click on a propagated slice
  arrives), which then condition later slices like the prompt. Every decode is a loss term.
- object scores: every slice holding any target pixel is positive; the thin ends of an organ (slices whose
  area is under ``THIN_END_FRACTION`` of its largest) weigh ``thin_end_weight`` times in the object loss,
  since memory tracking blanked exactly those slices.

The predictor stays in eval mode so that every code path (multimask choice, memory binarisation of
prompted slices) is the one inference runs; we call its SAM2Base methods with gradients enabled.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from sam2.modeling.sam2_utils import get_next_point, sample_box_points

from .batches import CaseTensors, Clip, StepPlan, seg_pairs
from .losses import multimask_loss
from .stage1 import chat_forward


def encode_frames(seg, pool: Sequence[CaseTensors], picks: Sequence[tuple[int, Sequence[int]]], device):
    """SAM2 image features for the (case, slices) ``picks``: (feats, pos, sizes) with feats[i] [HW, N, C]; from
    the feature cache when the step's cases carry cached features, else through the image encoder."""
    if pool[picks[0][0]].features is not None:
        parts = [pool[c].features.backbone(s) for c, s in picks]
        backbone = {key: [torch.cat(level).to(device) for level in zip(*(p[j] for p in parts))]
                    for j, key in enumerate(("backbone_fpn", "vision_pos_enc"))}
    else:
        backbone = seg.forward_image(torch.cat([pool[c].frames[s] for c, s in picks]).to(device).float())
    _, feats, pos, sizes = seg.backbone_features(backbone)
    return feats, pos, sizes


def _take(levels: list[torch.Tensor], rows: torch.Tensor) -> list[torch.Tensor]:
    return [x[:, rows] for x in levels]


THIN_END_FRACTION = 0.25  # a slice whose target area is below this share of the organ's largest slice


def decode(seg, frame_idx: int, is_cond: bool, feats, pos, sizes, point_inputs, output_dict, num_frames: int):
    """One SAM2 decode (``decode_step``) keeping the candidate masks, IoU predictions and object score;
    also returns (memory-conditioned features, high-res features) for corrective decodes of the same slice."""
    current, sam_out, high_res, pix_feat = seg.decode_step(frame_idx, is_cond, feats, pos, sizes, point_inputs,
                                                           output_dict, num_frames)
    _, high_multi, ious, low, high, obj_ptr, obj_logits = sam_out
    current.update(pred_masks=low, pred_masks_high_res=high, obj_ptr=obj_ptr, object_score_logits=obj_logits)
    return current, high_multi, ious, obj_logits, (pix_feat, high_res)


def _pad_points(n: int, device) -> dict:
    return {"point_coords": torch.zeros(n, 1, 2, device=device),
            "point_labels": -torch.ones(n, 1, dtype=torch.int32, device=device)}


def gt_prompts(masks: torch.Tensor, kind: str) -> dict:
    """First-slice prompts from GT masks [B, S, S] in SAM2 input pixels, as SAM2 trains: a box with SAM's noise
    (10% of its size, at most 20 px; labels 2, 3) or one positive click at a random object pixel."""
    gt = masks[:, None] > 0
    if kind == "box":
        coords, labels = sample_box_points(gt)
    else:
        coords, labels = get_next_point(gt, None, "uniform")
    return {"point_coords": coords.float(), "point_labels": labels.to(torch.int32)}


def corrective_clicks(pred_logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per row at a uniformly drawn error pixel: positive on a missed pixel, negative on a false alarm,
    a negative background click where the mask is right. pred_logits, masks [B, S, S] -> ([B, 1, 2], [B, 1])."""
    gt = masks[:, None].to(pred_logits.device) > 0
    coords, labels = get_next_point(gt, pred_logits.detach()[:, None] > 0, "uniform")
    return coords.float(), labels.to(torch.int32)


def object_weights(pool: Sequence[CaseTensors], clips: Sequence[Clip], thin_end_weight: float) -> torch.Tensor:
    """[B, T] object-loss weights: ``thin_end_weight`` on slices holding under ``THIN_END_FRACTION`` of the
    target's largest slice area (its thin ends; absent slices excluded), 1 elsewhere."""
    rows = []
    for c in clips:
        case = pool[c.case]
        area = case.mask(c.target, c.slices).sum((1, 2))
        held = case.slices_with(c.target)
        largest = case.mask(c.target, held).sum((1, 2)).max() if held else torch.tensor(0.0)
        thin = (area > 0) & (area < THIN_END_FRACTION * largest)
        rows.append(torch.where(thin, torch.tensor(float(thin_end_weight)), torch.tensor(1.0)))
    return torch.stack(rows)


def _corrected(seg, conditioned, points: dict | None, current: dict, gt_cpu: torch.Tensor, device):
    """Add one simulated corrective click to ``points`` (None on a tracked slice: the click alone) and decode the
    slice again with its previous low-res mask logits as mask input, as ``add_new_points_or_box`` does (the
    memory-conditioned features of the slice do not change with clicks); returns (points, decode outputs)."""
    pix_feat, high_res = conditioned
    xy, lab = corrective_clicks(current["pred_masks_high_res"][:, 0], gt_cpu)
    xy, lab = xy.to(device), lab.to(device)
    if points is not None:
        xy, lab = torch.cat([points["point_coords"], xy], 1), torch.cat([points["point_labels"], lab], 1)
    points = {"point_coords": xy, "point_labels": lab}
    sam_out = seg.decode_again(pix_feat, points, current["pred_masks"].detach(), high_res)
    _, high_multi, ious, low, high, obj_ptr, obj_logits = sam_out
    current = {**current, "point_inputs": points, "pred_masks": low, "pred_masks_high_res": high, "obj_ptr": obj_ptr,
               "object_score_logits": obj_logits}
    return points, current, high_multi, ious, obj_logits


def _clip_losses(seg, pool, clips: Sequence[Clip], device, tokens: torch.Tensor | None, first_prompts: dict | None,
                 corrections: dict[int, int], thin_end_weight: float = 1.0) -> list[dict[str, torch.Tensor]]:
    """Track ``clips`` (same length) together as one batch; losses per decode. ``corrections`` maps a clip slice
    index to its number of corrective clicks (the prompted slice adds them to its prompt; a tracked slice gets
    them alone and then conditions later slices, as a user's click on a propagated slice does)."""
    length = len(clips[0].slices)
    gts = torch.stack([pool[c.case].mask(c.target, c.slices) for c in clips])  # [B, T, S, S] cpu
    weights = object_weights(pool, clips, thin_end_weight).to(device)  # [B, T]
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
            current, multi, ious, obj, conditioned = decode(seg, t, t == 0, f, p, sizes, points, out_dict, num_frames)
            every = tokens is not None
            losses.append(multimask_loss(multi, ious, obj, gt, every_candidate=every, object_weights=weights[:, t]))
            clicks = corrections.get(t, 0)
            for _ in range(clicks):
                points, current, multi, ious, obj = _corrected(seg, conditioned, points, current, gts[:, t], device)
                losses.append(multimask_loss(multi, ious, obj, gt, object_weights=weights[:, t]))
            seg.remember(f, sizes, points, current)
            out_dict["cond_frame_outputs" if t == 0 or clicks else "non_cond_frame_outputs"][t] = current
    return losses


def _probe_losses(seg, pool, probes, tokens: torch.Tensor, device, gated: bool = True) -> dict[str, torch.Tensor]:
    """Single-slice decodes of the [SEG] tokens; ``gated=False`` trains the masks of present slices from the decoder's
    logits before SAM2 blanks the slices it scores absent (``ungated_probes``)."""
    gts = torch.cat([pool[c].mask(t, s) for c, t, s in probes]).to(device)
    counts = torch.tensor([len(s) for _, _, s in probes], device=device)
    feats, pos, sizes = encode_frames(seg, pool, [(c, s) for c, _, s in probes], device)
    num_frames = int(pool[probes[0][0]].labels.shape[0])
    with seg.extra_prompt_tokens(tokens.repeat_interleave(counts, dim=0)), seg.ungated_masks() as raw:
        _, multi, ious, obj, _ = decode(seg, 0, True, feats, pos, sizes, None,
                                        {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}, num_frames)
    if not gated:
        multi = F.interpolate(raw[-1][0].float(), size=multi.shape[-2:], mode="bilinear", align_corners=False)
    return multimask_loss(multi, ious, obj, gts, every_candidate=True, gated=gated)


def _mean(parts: list[dict[str, torch.Tensor]], prefix: str, into: dict[str, torch.Tensor]) -> torch.Tensor:
    total = torch.stack([p["loss"] for p in parts]).mean()
    for key in ("mask", "object", "iou"):
        into[f"{prefix}_{key}"] = torch.stack([p[key] for p in parts]).mean()
    return total


def stage2_losses(model, pool: Sequence[CaseTensors], plan: StepPlan, device: torch.device,
                  lm_weight: float = 1.0, seg_weight: float = 1.0, thin_end_weight: float = 1.0,
                  ungated_probes: bool = False) -> dict[str, torch.Tensor]:
    """Joint loss of one planned step; the dict holds "loss" (with graph) and detached parts for logging."""
    seg = model.segmenter
    rows = seg_pairs(plan) + plan.text
    out = chat_forward(model, pool, rows, device) if rows else None  # none: a box/click-only step
    lm = out.loss if out is not None else torch.zeros((), device=device)
    logs: dict[str, torch.Tensor] = {"lm": lm.detach()}
    total = lm_weight * lm
    seg_terms = []
    if plan.seg:  # rows hold the clips' requests, so out is set
        clip_rows = out.seg_batch_index < len(plan.seg)  # text rows may hold segmentation requests (LM loss only)
        if int(clip_rows.sum()) != len(plan.seg):
            raise RuntimeError(f"expected {len(plan.seg)} [SEG] states, got {int(clip_rows.sum())}")
        tokens = model.seg_prompt_tokens(out.seg_hidden[clip_rows])  # [n, k, 256]
        if plan.seg[0].slices:  # clip_len 0: the probes alone (a bundle that decodes text objects slice by slice)
            text_parts = _clip_losses(seg, pool, plan.seg, device, tokens, None, {}, thin_end_weight)
            seg_terms.append(_mean(text_parts, "text", logs))
        probe = _probe_losses(seg, pool, plan.probes, tokens, device, not ungated_probes)
        logs.update({f"probe_{k}": v for k, v in probe.items() if k != "loss"})
        seg_terms.append(probe["loss"])
    if plan.interactive:
        prompts = gt_prompts(torch.stack([pool[c.case].mask(c.target, c.slices[:1])[0] for c in plan.interactive]),
                             plan.interactive_kind)
        seg_terms.append(_mean(_clip_losses(seg, pool, plan.interactive, device, None, prompts, plan.corrections,
                                                    thin_end_weight), "click", logs))
    if seg_terms:
        seg_loss = torch.stack(seg_terms).sum()
        logs["seg"] = seg_loss.detach()
        total = total + seg_weight * seg_loss
    logs["loss"] = total
    return logs
