"""Stage 1 (alignment): next-token loss on report and VQA answers given the CT's visual tokens.

Trains whatever ``TrainConfig.trainable`` leaves unfrozen (by default the 3D encoder, projector and,
for a built-in LLM, the LLM itself; a released LLM is kept frozen or LoRA-adapted).

With ``patch_labels`` a training-only linear head also predicts, from every visual token the language model
reads, which label values the encoder patches pooled into it hold (``batches.patch_presence``, max-pooled like the
projector pools; binary cross-entropy): a dense signal that makes the encoder and projector carry a small finding
into the LLM's input, which the answer tokens alone did not (issue 25).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.medvlsam2 import VLMOutput
from .batches import CaseTensors, StepPlan, text_rows


def encode_cases(model, pool: Sequence[CaseTensors], cases: Sequence[int], device: torch.device):
    """The 3D encoder's patch tokens of ``cases`` (in that order): cached when the cases carry them."""
    if all(pool[c].features is not None for c in cases):  # the frozen encoder's tokens, cached
        parts = [torch.stack([pool[c].features.patches[i] for c in cases]).to(device).float()
                 for i in range(len(pool[cases[0]].features.patches))]
        return parts[0] if len(parts) == 1 else tuple(parts)
    return model.encode_patches(torch.stack([pool[c].encoder for c in cases]).to(device))


def chat_forward(model, pool: Sequence[CaseTensors], rows: Sequence[tuple], device: torch.device,
                 patches=None, visual: torch.Tensor | None = None) -> VLMOutput:
    """One LLM pass over (case, question, answer[, region inputs]) rows; each case's volume is encoded once
    (``patches``, ``visual``: ``encode_cases`` of the rows' cases in sorted order and its projection, when the
    caller has them already).
    A row with region inputs (patch weights [N], geometry [G]) gets its region embedding at its
    ``REGION_TOKEN`` (one per row, in row order)."""
    cases = sorted({r[0] for r in rows})
    index = {c: i for i, c in enumerate(cases)}
    if patches is None:
        patches = encode_cases(model, pool, cases, device)
    visual = model.projector(patches) if visual is None else visual
    ids, labels, attn = text_rows(model.tokenizer, model.num_image_tokens, [(r[1], r[2]) for r in rows])
    row_visual = visual[torch.tensor([index[r[0]] for r in rows], device=device)]
    with_region = [r for r in rows if len(r) > 3]
    regions = None
    if with_region:
        inputs = [r[3]() if callable(r[3]) else r[3] for r in with_region]  # ``batches.RegionInputs``, or the pair
        weights = torch.stack([w for w, _ in inputs]).to(device)
        geometry = torch.stack([g for _, g in inputs]).to(device)
        regions = model.region_embeddings(patches[torch.tensor([index[r[0]] for r in with_region], device=device)],
                                          weights, geometry)
    return model(None, ids.to(device), attn.to(device), labels.to(device), visual_tokens=row_visual, regions=regions)


def stage1_losses(model, pool: Sequence[CaseTensors], plan: StepPlan, device: torch.device,
                  patch_head: nn.Module | None = None, patch_weight: float = 1.0) -> dict[str, torch.Tensor]:
    cases = sorted({r[0] for r in plan.text})
    patches = encode_cases(model, pool, cases, device)
    visual = model.projector(patches)
    out = chat_forward(model, pool, plan.text, device, patches, visual)
    logs = {"loss": out.loss, "lm": out.loss.detach()}
    labelled = [i for i, c in enumerate(cases) if pool[c].patch_labels is not None]
    if patch_head is not None and labelled:
        per_patch = torch.stack([pool[cases[i]].patch_labels for i in labelled]).to(device)  # [B, N, L]
        # the patches pooled into each visual token (adaptive pooling: the same windows as the projector's)
        targets = F.adaptive_max_pool1d(per_patch.transpose(1, 2), visual.shape[1]).transpose(1, 2)
        aux = F.binary_cross_entropy_with_logits(patch_head(visual[labelled]), targets)
        logs.update(loss=out.loss + patch_weight * aux, patch=aux.detach())
    return logs
