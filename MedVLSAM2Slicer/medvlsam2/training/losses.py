"""Segmentation losses as in SAM2's own training: Dice + BCE on the best of the candidate masks,
an IoU-prediction regression so the decoder picks the right candidate at inference, and a BCE on
the object-score logit (present vs absent slice).

Best-of-candidates suits ambiguous prompts (one click: part or whole?). A text prompt is not
ambiguous, and best-of lets a shared "kidney" token put the right kidney in one candidate and the
left in another, so "left" and "right" never separate: text prompts train every candidate."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice per mask over the last two dims: logits/target [..., H, W] -> [...]."""
    prob = logits.sigmoid().flatten(-2)
    tgt = target.flatten(-2)
    inter = (prob * tgt).sum(-1)
    return 1 - (2 * inter + eps) / (prob.sum(-1) + tgt.sum(-1) + eps)


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean pixel BCE per mask: [..., H, W] -> [...]."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(-2).mean(-1)


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    pred = (logits > 0).float().flatten(-2)
    tgt = target.flatten(-2)
    inter = (pred * tgt).sum(-1)
    union = pred.sum(-1) + tgt.sum(-1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def multimask_loss(multimasks: torch.Tensor, ious: torch.Tensor, object_logits: torch.Tensor,
                   target: torch.Tensor, dice_weight: float = 1.0, bce_weight: float = 1.0,
                   iou_weight: float = 1.0, object_weight: float = 1.0, every_candidate: bool = False,
                   object_weights: torch.Tensor | None = None, gated: bool = True) -> dict[str, torch.Tensor]:
    """Losses of one decode.

    multimasks [B, M, H, W] logits, ious [B, M], object_logits [B, 1], target [B, H, W] in {0, 1}.
    Mask losses count only where the object is present (SAM2 blanks masks it scores as absent) and
    only for the candidate with the lowest loss, or for all of them with ``every_candidate`` (text
    prompts); IoU regression covers all candidates. ``object_weights`` [B] weighs rows in the object-score
    term (the thin ends of an organ): a weight of 3 counts that slice three times. ``gated=False``: ``multimasks``
    are the decoder's logits before SAM2 blanks absent-scored slices, and every present slice trains its mask.
    """
    tgt = target[:, None].expand_as(multimasks).float()
    per = dice_weight * dice_loss(multimasks, tgt) + bce_weight * bce_loss(multimasks, tgt)  # [B, M]
    rows = torch.arange(len(per), device=per.device)
    chosen = per.mean(dim=1) if every_candidate else per[rows, per.argmin(dim=1)]
    present = (target.flatten(1).sum(1) > 0).float()
    # A slice scored absent has its masks replaced by a constant (no gradient): leave it to the object term.
    decoded = present * (object_logits.detach().flatten() > 0).float() if gated else present
    mask_term = (chosen * decoded).sum() / decoded.sum().clamp(min=1)
    iou_err = F.mse_loss(ious.float(), mask_iou(multimasks.detach(), tgt), reduction="none").mean(1)
    iou_term = (iou_err * decoded).sum() / decoded.sum().clamp(min=1)
    rows_w = torch.ones_like(present) if object_weights is None else object_weights.float().flatten()
    obj_term = (F.binary_cross_entropy_with_logits(object_logits.float().flatten(), present, reduction="none")
                * rows_w).mean()
    total = mask_term + iou_weight * iou_term + object_weight * obj_term
    return {"loss": total, "mask": mask_term.detach(), "iou": iou_term.detach(), "object": obj_term.detach()}


def hard_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary Dice of logits > 0 per mask [..., H, W] -> [...] (1 when both are empty)."""
    pred = (logits > 0).float().flatten(-2)
    tgt = target.float().flatten(-2)
    denom = pred.sum(-1) + tgt.sum(-1)
    return torch.where(denom > 0, 2 * (pred * tgt).sum(-1) / denom.clamp(min=1), torch.ones_like(denom))

