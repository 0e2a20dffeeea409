"""The 3D ViT of M3D-LaMed's vision tower and of SegVol's image encoder, under monai 1.3's parameter names.

Both released models were trained with monai 1.3's ViT: a "perceptron" patch embedding (a linear layer on
flattened 4x16x16 patches) with learnable position embeddings, pre-norm transformer blocks and a final
LayerNorm; M3D's copy also has a cls token. We compose monai's own blocks. Current monai (>= 1.4) gives every
``TransformerBlock`` a ``norm_cross_attn`` LayerNorm even without cross attention; it is never used then and
the releases lack it, so it is replaced by an Identity here, the one place the layouts differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ViTConfig:
    image_size: tuple[int, int, int] = (32, 256, 256)  # (D, H, W) of the model input
    patch_size: tuple[int, int, int] = (4, 16, 16)
    hidden_size: int = 768
    mlp_dim: int = 3072
    num_layers: int = 12
    num_heads: int = 12

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(i // p for i, p in zip(self.image_size, self.patch_size))


class ViT3D(nn.Module):
    """[B, 1, D, H, W] -> normed tokens [B, (1 +) N, C] (with the cls token first when ``cls_token``)."""

    def __init__(self, cfg: ViTConfig, cls_token: bool = False) -> None:
        from monai.networks.blocks.patchembedding import PatchEmbeddingBlock
        from monai.networks.blocks.transformerblock import TransformerBlock

        super().__init__()
        if any(i % p for i, p in zip(cfg.image_size, cfg.patch_size)):
            raise ValueError(f"image size {cfg.image_size} is not a multiple of the patch size {cfg.patch_size}")
        self.cfg = cfg
        self.patch_embedding = PatchEmbeddingBlock(
            in_channels=1, img_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.hidden_size,
            num_heads=cfg.num_heads, proj_type="perceptron", pos_embed_type="learnable", dropout_rate=0.0,
            spatial_dims=3)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.hidden_size, cfg.mlp_dim, cfg.num_heads, 0.0, qkv_bias=False)
            for _ in range(cfg.num_layers))
        for block in self.blocks:
            block.norm_cross_attn = nn.Identity()  # unused without cross attention; absent from the releases
        self.norm = nn.LayerNorm(cfg.hidden_size)
        if cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(x)
        if hasattr(self, "cls_token"):
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
