"""SegVol (BAAI-DCAI/SegVol, MIT; HF BAAI/SegVol): CLIP text prompt -> 3D mask with SegVol's ViT, prompt
encoder and mask decoder. Served: text prompts, zoom-out pass only (the whole foreground crop resized to
32x256x256); upstream then refines with sliding 32x256x256 windows at native resolution over the zoom-out
ROI ("zoom-in"), which is not done here, so thin structures are coarser than upstream's full pipeline.
An empty mask is reported as not found.
"""

from __future__ import annotations

import torch

from ..capabilities import TEXT_SEGMENTATION
from ..utils.cancel import CancelToken, check
from .base import TargetMask, not_found
from .clip_text import MAX_TARGET_CHARS, PROMPT, ClipTextTower
from .m3d_lamed import _clean
from .preprocess import segvol_input, segvol_paste
from .seg_decoder import SegConfig, SegModules


class SegVolNet(SegModules):
    """The published module tree under ``model.``: image/prompt/mask modules + ``text_encoder``."""

    def __init__(self, cfg: SegConfig, clip_config) -> None:
        super().__init__(cfg)
        self.text_encoder = ClipTextTower(clip_config, cfg.dim)


class SegVol(torch.nn.Module):
    capabilities = frozenset({TEXT_SEGMENTATION})
    kind = "segvol"
    referring = False

    def __init__(self, net: SegVolNet, tokenizer, description: str, provenance: str) -> None:
        super().__init__()
        self.net, self.tokenizer = net, tokenizer
        self.description, self.provenance = description, provenance

    @property
    def device(self) -> torch.device:
        return self.net.mask_decoder.iou_token.weight.device

    def text_embedding(self, target: str) -> torch.Tensor:
        tokens = self.tokenizer([PROMPT.format(target)], return_tensors="pt")
        ids, attn = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
        return self.net.text_encoder(ids, attn, int(self.tokenizer.eos_token_id))

    @torch.inference_mode()
    def segment_target(self, volume, target: str, cancel: CancelToken | None = None) -> TargetMask:
        target = _clean(target, "target", MAX_TARGET_CHARS)
        image, geo = segvol_input(volume.array, self.net.cfg.vit.image_size)
        check(cancel)
        weight = self.net.mask_decoder.iou_token.weight
        embedding = self.net.encode(image[None, None].to(weight.device, weight.dtype))
        check(cancel)
        logits = self.net.decode(embedding, self.text_embedding(target).to(weight.dtype))[0, 0]
        mask = segvol_paste(logits, geo)
        if not mask.any():
            return not_found(target, "SegVol's mask for it is empty")
        return TargetMask(target, mask)
