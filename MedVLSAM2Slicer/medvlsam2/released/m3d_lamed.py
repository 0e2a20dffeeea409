"""M3D-LaMed (BAAI-DCAI/M3D, MIT; HF GoodBaiBai88/M3D-LaMed-Phi-3-4B): a Phi-3 LM that sees a CT through a 3D
ViT + spatial-pooling projector and answers with text; a ``[SEG]`` token's state, through ``seg_projector``,
prompts SegVol's mask decoder (``seg_module``). Our modules under the published names (keys.py for the one
rename), transformers' Phi-3 for the LM.

Language rules (upstream's, decided where upstream is ambiguous):
- Input ``"<im_patch>" * 256 + " " + question`` (its training format), no chat template; the embeddings of
  positions 1..256 are replaced by the visual tokens (the first token, BOS, is kept).
- Greedy decoding until an end token or ``max_new_tokens``.
- The ``[SEG]`` state is the last-layer (post-norm) state of the position *before* each ``[SEG]``, i.e. the
  state that predicts it, as in training; several ``[SEG]`` are averaged. Upstream ``generate`` drops a
  ``[SEG]`` that is the very first answer token (it only looks at states of generated tokens); training used
  the prompt's last state for it, and so do we: a first-token ``[SEG]`` counts.
- No ``[SEG]`` (e.g. "Sorry, there is no spleen.") -> not found with the answer as reason; an empty mask too.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..capabilities import LANGUAGE, TEXT_SEGMENTATION
from ..errors import CheckpointError, InputError
from ..utils.cancel import CancelToken, check
from .base import TargetMask, not_found
from .preprocess import m3d_input, m3d_paste
from .seg_decoder import SegConfig, SegModules
from .vit3d import ViT3D, ViTConfig

IMAGE_TOKEN = "<im_patch>"
SEG_TOKEN = "[SEG]"
SEGMENT_PROMPT = "Can you segment the {} in this image?"
REFERRING_PROMPT = "{} Please answer and segment."
MAX_QUESTION_CHARS = 2000
MAX_NEW_TOKENS = 1024


class VisionTower(nn.Module):
    """``vision_tower.vision_tower`` = the ViT with a cls token; the patch tokens of the last layer."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.vision_tower = ViT3D(cfg, cls_token=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vision_tower(images)[:, 1:]


class SpatialPoolingProjector(nn.Module):
    """Patch tokens on their 3D grid, average-pooled by ``pool``, then Linear-GELU-Linear (``projector.{0,2}``)."""

    def __init__(self, grid: tuple[int, int, int], in_dim: int, out_dim: int, pool: int = 2) -> None:
        super().__init__()
        self.grid, self.pool = grid, pool
        self.projector = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    @property
    def num_tokens(self) -> int:
        return int(np.prod([g // self.pool for g in self.grid]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, *self.grid)
        x = F.avg_pool3d(x, kernel_size=self.pool, stride=self.pool)
        return self.projector(x.flatten(2).transpose(1, 2))


def attach_parts(lm: nn.Module, vit: ViTConfig, seg: SegConfig, pool: int) -> nn.Module:
    """Put our modules on the Phi-3 model (``lm.model``) so that its state dict has the published names."""
    hidden = lm.config.hidden_size
    inner = lm.model
    inner.vision_tower = VisionTower(vit)
    inner.mm_projector = SpatialPoolingProjector(vit.grid, vit.hidden_size, hidden, pool)
    inner.seg_projector = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
                                        nn.Linear(hidden, seg.dim), nn.Dropout(0.1))
    inner.seg_module = SegModules(seg)
    return lm


class M3DLaMed(nn.Module):
    """``TextSegmenter`` (with referring descriptions) and ``LanguageAnswerer`` over M3D-LaMed weights."""

    capabilities = frozenset({TEXT_SEGMENTATION, LANGUAGE})
    kind = "m3d-lamed"
    referring = True

    def __init__(self, lm: nn.Module, tokenizer, description: str, provenance: str, eos_ids: set[int],
                 max_new_tokens: int = 256) -> None:
        super().__init__()
        self.lm, self.tokenizer = lm, tokenizer
        self.description, self.provenance = description, provenance
        self.eos_ids, self.max_new_tokens = eos_ids, max_new_tokens
        inner = lm.model
        self.num_image_tokens = inner.mm_projector.num_tokens
        self.input_size = inner.seg_module.cfg.vit.image_size
        self.image_token_id = self._token_id(IMAGE_TOKEN)
        self.seg_token_id = self._token_id(SEG_TOKEN)

    def _token_id(self, token: str) -> int:
        ids = self.tokenizer.convert_tokens_to_ids([token])
        if not ids or ids[0] is None or ids[0] == self.tokenizer.unk_token_id:
            raise CheckpointError(f"the folder's tokenizer has no {token} token; it is not M3D-LaMed's tokenizer")
        return int(ids[0])

    @property
    def device(self) -> torch.device:
        return self.lm.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.lm_head.weight.dtype

    # ----- inputs ----------------------------------------------------------------------------------
    def prompt_ids(self, question: str) -> torch.Tensor:
        ids = self.tokenizer(IMAGE_TOKEN * self.num_image_tokens + " " + question)["input_ids"]
        if ids[1:1 + self.num_image_tokens] != [self.image_token_id] * self.num_image_tokens:
            raise CheckpointError(f"the folder's tokenizer does not give one first token then {self.num_image_tokens} "
                                  f"{IMAGE_TOKEN} tokens; it is not M3D-LaMed's tokenizer")
        return torch.tensor(ids, device=self.device)

    def image_tensor(self, array_kji: np.ndarray):
        image, box = m3d_input(array_kji, self.input_size)
        return image[None, None].to(self.device, self.dtype), box

    def embed(self, ids: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Upstream's splice: [first token][visual tokens][embeddings after position 256]."""
        inner = self.lm.model
        visual = inner.mm_projector(inner.vision_tower(image))
        embeds = inner.embed_tokens(ids[None])
        return torch.cat([embeds[:, :1], visual.to(embeds.dtype), embeds[:, 1 + visual.shape[1]:]], dim=1)

    # ----- decoding --------------------------------------------------------------------------------
    def _greedy(self, embeds: torch.Tensor, cancel: CancelToken | None, limit: int,
                states: list[torch.Tensor] | None) -> Iterator[int]:
        """Token ids, greedily; ``states`` (when given) receives, per token, the last-layer state that
        predicted it."""
        out = self.lm.model(inputs_embeds=embeds, use_cache=True)
        for _ in range(limit):
            check(cancel)
            last = out.last_hidden_state[:, -1]
            next_id = int(self.lm.lm_head(last).argmax(-1))
            if next_id in self.eos_ids:
                return
            if states is not None:
                states.append(last)
            yield next_id
            out = self.lm.model(input_ids=torch.tensor([[next_id]], device=self.device),
                                cache=out.cache, use_cache=True)

    def answer(self, image: torch.Tensor, question: str, cancel: CancelToken | None = None,
               limit: int | None = None) -> tuple[list[int], torch.Tensor | None]:
        """(generated ids, the averaged [SEG] state or None when the answer has no [SEG])."""
        states: list[torch.Tensor] = []
        ids = list(self._greedy(self.embed(self.prompt_ids(question), image), cancel,
                                limit or self.max_new_tokens, states))
        seg = [s for s, t in zip(states, ids) if t == self.seg_token_id]
        return ids, (torch.cat(seg).mean(dim=0, keepdim=True) if seg else None)

    def decode_text(self, ids: list[int]) -> str:
        return " ".join(self.tokenizer.decode(ids, skip_special_tokens=True).split())

    # ----- the protocol ----------------------------------------------------------------------------
    @torch.inference_mode()
    def segment_target(self, volume, target: str, cancel: CancelToken | None = None) -> TargetMask:
        return self._segment(volume, target, SEGMENT_PROMPT.format(_clean(target, "target")), cancel)

    @torch.inference_mode()
    def segment_description(self, volume, description: str, cancel: CancelToken | None = None) -> TargetMask:
        """Referring segmentation: a free description ("the organ that filters blood ...")."""
        return self._segment(volume, description, REFERRING_PROMPT.format(_clean(description, "description")), cancel)

    def _segment(self, volume, name: str, question: str, cancel: CancelToken | None) -> TargetMask:
        image, box = self.image_tensor(volume.array)
        ids, seg_state = self.answer(image, question, cancel)
        text = self.decode_text(ids)
        if seg_state is None:
            return not_found(name, f"the model answered: {text}" if text else "the model gave no answer", text)
        check(cancel)
        inner = self.lm.model
        logits = inner.seg_module(image, inner.seg_projector(seg_state).to(image.dtype))[0, 0]
        mask = m3d_paste(logits, box)
        if not mask.any():
            return not_found(name, "the model's mask is empty", text)
        return TargetMask(name, mask, answer=text)

    def ask(self, volume, question: str, cancel: CancelToken | None = None,
            max_new_tokens: int | None = None) -> Iterator[str]:
        """Stream a greedy answer to a free question, piece by piece (``cancel`` checked between tokens)."""
        question = _clean(question, "question", MAX_QUESTION_CHARS)
        limit = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if not 1 <= limit <= MAX_NEW_TOKENS:
            raise InputError(f"max_new_tokens must be 1..{MAX_NEW_TOKENS}, got {max_new_tokens}")
        return self._stream(volume, question, cancel, limit)

    @torch.inference_mode()
    def _stream(self, volume, question: str, cancel: CancelToken | None, limit: int) -> Iterator[str]:
        image, _ = self.image_tensor(volume.array)
        previous, generated = "", []
        for token_id in self._greedy(self.embed(self.prompt_ids(question), image), cancel, limit, None):
            generated.append(token_id)
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            if len(text) > len(previous) and not text.endswith("\ufffd"):  # a whole UTF-8 character
                yield text[len(previous):]
                previous = text


def _clean(text: str, what: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    if not text:
        raise InputError(f"the {what} is empty; type what to segment, e.g. liver")
    if len(text) > limit:
        raise InputError(f"the {what} has {len(text)} characters; keep it under {limit}")
    return text
