"""MedVLSAM2: 3D encoder + projector + LLM with [SEG] + bridge + SAM2 volume segmenter, one nn.Module."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from ..capabilities import ALL
from ..config import ModelConfig
from ..errors import InputError
from ..utils.cancel import CancelToken, check
from .bridge import SegBridge
from .language import build_language_model, load_llm_tokenizer
from .projector import build_projector
from .prompting import (FORCED, IMAGE_TOKEN, REGION_TOKEN, SEG_TOKEN, build_inputs, region_question, seg_answer,
                        segment_question)
from .region import RegionEncoder, region_inputs
from .segmenter import build_segmenter
from .tokenizer import build_tokenizer
from .vision_encoder import build_vision_encoder


@dataclass
class VLMOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor
    seg_hidden: torch.Tensor  # [N, C] last-layer hidden states at [SEG] positions
    seg_batch_index: torch.Tensor  # [N] batch row of each [SEG]


class MedVLSAM2(nn.Module):
    # Set per instance by ``medvlsam2.factory.load_model`` (bundle metadata, or "random" for a named config).
    capabilities: frozenset[str] = ALL
    provenance: str = "random"
    description: str = "MedVL-SAM2"

    def __init__(self, config: ModelConfig, tokenizer, segmenter: nn.Module | None = None) -> None:
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        if config.region_input and REGION_TOKEN not in tokenizer.get_vocab():  # before the LLM is sized to it
            tokenizer.add_special_tokens({"additional_special_tokens": [SEG_TOKEN, IMAGE_TOKEN, REGION_TOKEN]})
        self.vision_encoder = build_vision_encoder(config.vision)
        self.llm = build_language_model(config.llm, tokenizer)
        width = self.llm.get_input_embeddings().embedding_dim
        self.projector = build_projector(config.projector, self.vision_encoder.output_shapes, width)
        self.bridge = SegBridge(width, config.bridge_hidden, config.num_seg_prompt_tokens, config.segmenter.prompt_dim)
        self.segmenter = segmenter if segmenter is not None else build_segmenter(config.segmenter)  # given: factory.new_model
        # an empty module without region input, so old bundles load strictly and "region" is always a module
        self.region = RegionEncoder(config.vision, width) if config.region_input else nn.Module()
        self.seg_token_id = tokenizer.convert_tokens_to_ids(SEG_TOKEN)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.region_token_id = tokenizer.convert_tokens_to_ids(REGION_TOKEN) if config.region_input else None

    @classmethod
    def from_config(cls, config: ModelConfig, tokenizer=None, segmenter: nn.Module | None = None) -> "MedVLSAM2":
        """Random weights (the LLM's own weights when ``config.llm.path`` names a local folder)."""
        if tokenizer is None:
            tokenizer = load_llm_tokenizer(config.llm.path) if config.llm.path else build_tokenizer()
        return cls(config, tokenizer, segmenter)

    @property
    def num_image_tokens(self) -> int:
        return self.config.projector.num_tokens

    # ----- the language-model and segmenter protocols (see docs/ARCHITECTURE.md) ---------------
    @property
    def vision_input_size(self) -> tuple[int, int, int]:
        return tuple(self.config.vision.input_size)

    @property
    def vision_window(self) -> str:
        return self.config.vision.window

    @property
    def segmenter_window(self) -> str:
        return self.config.segmenter.window

    @property
    def supports_region_input(self) -> bool:
        return self.config.region_input

    @property
    def region_trained(self) -> bool:
        """Whether answers about a region come from a trained region encoder (``ModelConfig.region_trained``)."""
        return self.config.region_input and self.config.region_trained

    def encode_patches(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 1, D, H, W] in [0, 1] -> the 3D encoder's patch tokens [B, N, Cv]."""
        expected = (1, *self.config.vision.input_size)
        if images.dim() != 5 or tuple(images.shape[1:]) != expected:
            raise InputError(f"encoder input must be [B, {', '.join(map(str, expected))}], got {tuple(images.shape)}")
        return self.vision_encoder(images)

    def encode_volume(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 1, D, H, W] in [0, 1] -> visual tokens [B, T, C]."""
        return self.projector(self.encode_patches(images))

    def region_embeddings(self, patches: torch.Tensor, weights: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        """Patch tokens [R, N, Cv] of each region's volume, weights [R, N], geometry [R, G] -> [R, C]."""
        if not self.supports_region_input:
            raise InputError("this model has no region input; load a bundle trained with region questions")
        return self.region(patches, weights, geometry)

    @torch.inference_mode()
    def encode_region(self, images: torch.Tensor, mask, spacing) -> torch.Tensor:
        """Encoder input [1, 1, D, H, W], a region mask [k, j, i] on the volume grid with ``spacing``
        (i, j, k) mm -> the region's embedding [1, C] (read at ``REGION_TOKEN``)."""
        weights, geometry = region_inputs(mask, spacing, images[0], self.config.vision)
        device = images.device
        return self.region_embeddings(self.encode_patches(images), weights[None].to(device), geometry[None].to(device))

    def _embed(self, input_ids: torch.Tensor, visual: torch.Tensor, regions: torch.Tensor | None = None) -> torch.Tensor:
        embeds = self.llm.get_input_embeddings()(input_ids)
        slots = input_ids == self.image_token_id
        if int(slots.sum()) != visual.shape[0] * visual.shape[1]:
            raise InputError(f"each sequence needs exactly {visual.shape[1]} image placeholder tokens")
        embeds = embeds.clone()
        embeds[slots] = visual.reshape(-1, visual.shape[-1]).to(embeds.dtype)
        if self.region_token_id is not None:
            region_slots = input_ids == self.region_token_id
            count = 0 if regions is None else regions.shape[0]
            if int(region_slots.sum()) != count:
                raise InputError(f"{int(region_slots.sum())} region placeholder(s) but {count} region(s) given")
            if count:
                embeds[region_slots] = regions.to(embeds.dtype)
        return embeds

    def forward(self, images: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, visual_tokens: torch.Tensor | None = None,
                regions: torch.Tensor | None = None) -> VLMOutput:
        """``regions`` [R, C]: one embedding per ``REGION_TOKEN`` in ``input_ids``, in reading order."""
        visual = visual_tokens if visual_tokens is not None else self.encode_volume(images)
        out = self.llm(inputs_embeds=self._embed(input_ids, visual, regions), attention_mask=attention_mask,
                       labels=labels, output_hidden_states=True)
        seg = input_ids == self.seg_token_id
        return VLMOutput(out.loss, out.logits, out.hidden_states[-1][seg], seg.nonzero()[:, 0])

    def seg_prompt_tokens(self, seg_hidden: torch.Tensor) -> torch.Tensor:
        return self.bridge(seg_hidden)

    @torch.inference_mode()  # also wraps each step of the generator: no autograd graph while decoding
    def _greedy(self, visual: torch.Tensor, question: str, cancel: CancelToken | None,
                max_new_tokens: int | None, region: torch.Tensor | None = None) -> Iterator[int]:
        ids, _ = build_inputs(self.tokenizer, visual.shape[1], question)
        out = self.llm(inputs_embeds=self._embed(ids[None].to(visual.device), visual, region), use_cache=True)
        for _ in range(max_new_tokens or self.config.llm.max_new_tokens):
            check(cancel)
            next_id = int(out.logits[0, -1].argmax())
            if next_id == self.tokenizer.eos_token_id:
                return
            yield next_id
            out = self.llm(input_ids=torch.tensor([[next_id]], device=visual.device),
                           past_key_values=out.past_key_values, use_cache=True)

    def stream_text(self, visual_tokens: torch.Tensor, question: str, cancel: CancelToken | None = None,
                    max_new_tokens: int | None = None, region: torch.Tensor | None = None) -> Iterator[str]:
        """Greedy answer, yielded piece by piece; ``cancel`` is checked between tokens. With ``region``
        ([1, C] from ``encode_region``) the question is asked about that region (``region_question``)."""
        if not question.strip():
            raise InputError("the question is empty; type a question about the volume")
        if region is not None:
            if not self.supports_region_input:
                raise InputError("this model has no region input; load a bundle trained with region questions")
            question = region_question(question)
        previous = ""
        generated: list[int] = []
        for token_id in self._greedy(visual_tokens, question, cancel, max_new_tokens, region):
            generated.append(token_id)
            text = self.tokenizer.decode(generated, skip_special_tokens=False)
            if len(text) > len(previous):
                yield text[len(previous):]
                previous = text

    @torch.inference_mode()
    def text_to_seg_prompts(self, visual_tokens: torch.Tensor, prompt: str, cancel: CancelToken | None = None,
                            force: bool = False) -> list[tuple[str, torch.Tensor]]:
        """One (name, prompt tokens [1, n, 256]) per [SEG] in the answer to "Segment the <prompt>.".

        An answer without [SEG] ("There is no X.") gives an empty list: the model says the target is not
        there, and nothing is segmented. Only with ``force`` is "It is [SEG] <prompt>." used instead, and
        the object is then named "<prompt> (forced)". The [SEG] states are read by one teacher-forced
        pass. Each object is named by the words after its [SEG] ("It is [SEG] liver, [SEG] spleen."),
        else by the prompt.
        """
        if not prompt.strip():
            raise InputError("the text prompt is empty; type what to segment, e.g. 'liver'")
        question = segment_question(prompt)
        answer_ids = list(self._greedy(visual_tokens, question, cancel, None))
        forced = self.seg_token_id not in answer_ids
        if forced and not force:
            return []
        if forced:
            answer_ids = self.tokenizer.encode(seg_answer(prompt), add_special_tokens=False)
        ids, _ = build_inputs(self.tokenizer, visual_tokens.shape[1], question)
        full = torch.cat([ids, torch.tensor(answer_ids)])[None].to(visual_tokens.device)
        out = self.forward(None, full, visual_tokens=visual_tokens)
        tokens = self.seg_prompt_tokens(out.seg_hidden)
        answer = self.tokenizer.decode(answer_ids, skip_special_tokens=False)
        phrases = [re.sub(r"\b(and|it is)$", "", p.strip(" ,.").lower()).strip(" ,.") for p in answer.split(SEG_TOKEN)[1:]]
        names = [p if p and len(tokens) > 1 else prompt.strip() for p in phrases]
        names = [f"{n} {FORCED}" for n in names] if forced else names
        return [(name, tokens[i:i + 1]) for i, name in enumerate(names)]

    def enable_region_input(self, words=()) -> "MedVLSAM2":
        """Add ``REGION_TOKEN``, the words in ``words`` the tokenizer lacks (a word-level vocabulary maps
        new words to [UNK]) and a freshly initialised region encoder; new embedding rows start at the
        mean of the old ones (transformers' resize). Used to continue a bundle trained without them."""
        from tokenizers import AddedToken

        self.tokenizer.add_special_tokens({"additional_special_tokens": [SEG_TOKEN, IMAGE_TOKEN, REGION_TOKEN]})
        vocab = self.tokenizer.get_vocab()
        new = sorted({w for w in words if w.lower() not in vocab and w.isalpha()})
        self.tokenizer.add_tokens([AddedToken(w.lower(), single_word=True, normalized=True) for w in new])
        self.llm.resize_token_embeddings(len(self.tokenizer))
        if not self.config.region_input:
            self.config.region_input, self.config.region_trained = True, False
            width = self.llm.get_input_embeddings().embedding_dim
            self.region = RegionEncoder(self.config.vision, width)
        self.region_token_id = self.tokenizer.convert_tokens_to_ids(REGION_TOKEN)
        return self
