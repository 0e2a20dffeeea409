"""SegVol (BAAI-DCAI/SegVol, MIT; HF BAAI/SegVol): CLIP text prompt -> 3D mask with SegVol's ViT, prompt
encoder and mask decoder, as its demo infers: zoom-out (the whole foreground crop resized to 32x256x256),
then zoom-in (MONAI sliding 32x256x256 windows, overlap 0.5, constant blending, over the region the zoom-out
found, at the crop's native resolution; those logits replace the zoom-out ones there). ``zoom_in = False``
keeps the zoom-out pass only. Text prompts only. An empty mask is reported as not found.
"""

from __future__ import annotations

import torch

from ..capabilities import TEXT_SEGMENTATION
from ..utils.cancel import CancelToken, check
from .base import TargetMask, not_found
from .clip_text import MAX_TARGET_CHARS, PROMPT, ClipTextTower
from .m3d_lamed import _clean
from .preprocess import segvol_input, segvol_paste, zoom_in_roi, zoom_out_to_crop
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
    zoom_in = True
    overlap = 0.5

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
    def crop_logits(self, volume, target: str, cancel: CancelToken | None = None):
        """Logits on the foreground crop's grid (zoom-out, then zoom-in) and the geometry back to the input."""
        from monai.inferers import sliding_window_inference

        size = self.net.cfg.vit.image_size
        zoom_out, crop, geo = segvol_input(volume.array, size)
        weight = self.net.mask_decoder.iou_token.weight
        text = self.text_embedding(target).to(weight.dtype)
        check(cancel)

        def predict(window: torch.Tensor) -> torch.Tensor:
            check(cancel)
            return self.net.decode(self.net.encode(window.to(weight.device, weight.dtype)), text.expand(len(window), -1))

        logits = zoom_out_to_crop(predict(zoom_out[None, None])[0, 0].cpu(), crop.shape)
        roi = zoom_in_roi(logits, size) if self.zoom_in else None
        if roi is not None:
            window = crop[roi][None, None]
            logits[roi] = sliding_window_inference(window, size, 1, predict, overlap=self.overlap,
                                                   mode="constant", padding_mode="constant", cval=0.0)[0, 0].float().cpu()
        return logits, geo

    def segment_target(self, volume, target: str, cancel: CancelToken | None = None) -> TargetMask:
        target = _clean(target, "target", MAX_TARGET_CHARS)
        logits, geo = self.crop_logits(volume, target, cancel)
        mask = segvol_paste(logits, geo)
        if not mask.any():
            return not_found(target, "SegVol's mask for it is empty")
        return TargetMask(target, mask)
