"""SegVol's prompt encoder and 3D mask decoder (shared by SegVol and M3D-LaMed's ``seg_module``).

A SAM-style decoder lifted to 3D: a text (or [SEG]) embedding becomes one sparse prompt token, a two-way
transformer (sam2's, fed the 3D grid flattened) mixes it with the image tokens, two transposed 3D convolutions
upsample x4 and the mask token's hypernetwork plus a text-similarity term give low-resolution logits, which are
upsampled trilinearly to the input size. Parameter names are the releases' except the two-way transformer's MLP
(sam2: ``mlp.layers.{0,1}``; releases: ``mlp.lin{1,2}``), renamed in ``keys.py``. Only text prompts are served;
the point/box/mask prompt parameters exist so the published files load strictly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .vit3d import ViT3D, ViTConfig


@dataclass(frozen=True)
class SegConfig:
    vit: ViTConfig = field(default_factory=ViTConfig)
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp: int = 2048
    mask_in_chans: int = 16
    iou_hidden: int = 256
    num_multimask_outputs: int = 3

    @property
    def dim(self) -> int:
        return self.vit.hidden_size


class PositionEmbeddingRandom3D(nn.Module):
    """Random Fourier features of normalised (x, y, z) grid positions (SAM's, in 3D)."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((3, num_pos_feats)))

    def forward(self, size: tuple[int, int, int]) -> torch.Tensor:
        h, w, d = size
        m = self.positional_encoding_gaussian_matrix
        grid = torch.ones((h, w, d), device=m.device, dtype=m.dtype)
        y = (grid.cumsum(dim=0) - 0.5) / h
        x = (grid.cumsum(dim=1) - 0.5) / w
        z = (grid.cumsum(dim=2) - 0.5) / d
        coords = 2 * math.pi * ((2 * torch.stack([x, y, z], dim=-1) - 1) @ m)  # SAM's order: (x, y, z)
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1).permute(3, 0, 1, 2)  # C x h x w x d


class PromptEncoder3D(nn.Module):
    def __init__(self, cfg: SegConfig) -> None:
        from sam2.modeling.sam2_utils import LayerNorm2d

        super().__init__()
        dim, chans = cfg.dim, cfg.mask_in_chans
        self.grid = cfg.vit.grid
        self.pe_layer = PositionEmbeddingRandom3D(dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(4))  # pos/neg point, box corners
        self.not_a_point_embed = nn.Embedding(1, dim)
        # As published (2D convolutions: SegVol never feeds a mask prompt); kept so the files load strictly.
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, chans // 4, kernel_size=2, stride=2), LayerNorm2d(chans // 4), nn.GELU(),
            nn.Conv2d(chans // 4, chans, kernel_size=2, stride=2), LayerNorm2d(chans), nn.GELU(),
            nn.Conv2d(chans, dim, kernel_size=1))
        self.no_mask_embed = nn.Embedding(1, dim)

    def dense_pe(self) -> torch.Tensor:
        return self.pe_layer(self.grid).unsqueeze(0)

    def forward(self, text_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Text only: the sparse prompt is the embedding itself; the dense prompt is ``no_mask_embed``."""
        bs = text_embedding.shape[0]
        sparse = text_embedding.unsqueeze(1)
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(bs, -1, *self.grid)
        return sparse, dense


class MaskDecoder3D(nn.Module):
    def __init__(self, cfg: SegConfig) -> None:
        from sam2.modeling.sam.transformer import TwoWayTransformer
        from sam2.modeling.sam2_utils import MLP

        super().__init__()
        dim = cfg.dim
        self.transformer = TwoWayTransformer(depth=cfg.decoder_depth, embedding_dim=dim, num_heads=cfg.decoder_heads,
                                             mlp_dim=cfg.decoder_mlp)
        self.num_mask_tokens = cfg.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        up = tuple(2 * g for g in cfg.vit.grid)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(dim, dim // 4, kernel_size=2, stride=2), nn.LayerNorm((dim // 4, *up)), nn.GELU(),
            nn.ConvTranspose3d(dim // 4, dim // 8, kernel_size=2, stride=2), nn.GELU())
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, cfg.iou_hidden, self.num_mask_tokens, 3)
        self.txt_align_upscaled_embedding = nn.Linear(dim, dim // 8)

    def forward(self, image_embeddings: torch.Tensor, text_embedding: torch.Tensor, image_pe: torch.Tensor,
                sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Single-mask output (SegVol's ``multimask_output=False``): [B, 1, 4h, 4w, 4d] logits."""
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat((tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse), dim=1)
        src = image_embeddings + dense
        pos = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
        b, c, h, w, d = src.shape
        # sam2's transformer is 2D; the 3D grid flattened in the same (h, w, d) order is what it attends over.
        hs, src = self.transformer(src.reshape(b, c, h, w * d), pos.reshape(b, c, h, w * d), tokens)
        src = src.transpose(1, 2).reshape(b, c, h, w, d)
        up = self.output_upscaling(src)
        hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        b, c, h, w, d = up.shape
        flat = up.reshape(b, c, h * w * d)
        masks = (hyper @ flat).reshape(b, -1, h, w, d)
        sim = (self.txt_align_upscaled_embedding(text_embedding).unsqueeze(1) @ flat).reshape(b, 1, h, w, d)
        return (masks + sim)[:, :1]


class SegModules(nn.Module):
    """``image_encoder`` + ``prompt_encoder`` + ``mask_decoder`` as in both releases."""

    def __init__(self, cfg: SegConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_encoder = ViT3D(cfg.vit, cls_token=False)
        self.prompt_encoder = PromptEncoder3D(cfg)
        self.mask_decoder = MaskDecoder3D(cfg)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 1, D, H, W] -> image embedding [B, C, d, h, w]."""
        tokens = self.image_encoder(image)
        return tokens.transpose(1, 2).reshape(image.shape[0], -1, *self.cfg.vit.grid)

    def decode(self, embedding: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        """Mask logits [B, 1, D, H, W] at the model's input size for one prompt embedding per batch item."""
        sparse, dense = self.prompt_encoder(text_embedding)
        low = self.mask_decoder(embedding, text_embedding, self.prompt_encoder.dense_pe(), sparse, dense)
        return F.interpolate(low, size=self.cfg.vit.image_size, mode="trilinear", align_corners=False)

    def forward(self, image: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(image), text_embedding)
