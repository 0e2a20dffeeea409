"""Stage 1 (alignment): next-token loss on report and VQA answers given the CT's visual tokens.

Trains whatever ``TrainConfig.trainable`` leaves unfrozen (by default the 3D encoder, projector and,
for a built-in LLM, the LLM itself; a released LLM is kept frozen or LoRA-adapted).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..modeling.medvlsam2 import VLMOutput
from .batches import CaseTensors, StepPlan, text_rows


def chat_forward(model, pool: Sequence[CaseTensors], rows: Sequence[tuple[int, str, str]],
                 device: torch.device) -> VLMOutput:
    """One LLM pass over (case, question, answer) rows; each case's volume is encoded once."""
    cases = sorted({c for c, _, _ in rows})
    index = {c: i for i, c in enumerate(cases)}
    visual = model.encode_volume(torch.stack([pool[c].encoder for c in cases]).to(device))
    ids, labels, attn = text_rows(model.tokenizer, model.num_image_tokens, [(q, a) for _, q, a in rows])
    row_visual = visual[torch.tensor([index[c] for c, _, _ in rows], device=device)]
    return model(None, ids.to(device), attn.to(device), labels.to(device), visual_tokens=row_visual)


def stage1_losses(model, pool: Sequence[CaseTensors], plan: StepPlan, device: torch.device) -> dict[str, torch.Tensor]:
    out = chat_forward(model, pool, plan.text, device)
    return {"loss": out.loss, "lm": out.loss.detach()}
