"""The one place that touches the ``voxtell`` and ``nnunetv2`` packages (the ``voxtell`` extra, pinned).

VoxTell's network, preprocessing (crop to non-zero, z-score), sliding window (step 0.5, Gaussian weights),
text pooling and the crop paste-back are upstream's own code, called here. Two things are not: the
predictor's ``__init__`` (it unpickles the checkpoint with ``weights_only=False`` and may download the
embedding bank), so the predictor is assembled from its parts below; and ``pydoc.locate`` of the class
names in ``plans.json``, which is limited to torch and dynamic_network_architectures.
"""

from __future__ import annotations

import pydoc
from typing import Callable

import numpy as np
import torch

from ..errors import Cancelled, CapabilityError, CheckpointError

INSTALL = "pip install 'medvlsam2[voxtell]' (or scripts/bootstrap.sh --voxtell)"
LOCATABLE = ("torch.nn.", "dynamic_network_architectures.")  # plans.json may name classes from these only


def require_package() -> None:
    try:
        import nnunetv2  # noqa: F401
        import voxtell  # noqa: F401
    except ImportError as exc:
        raise CapabilityError(f"VoxTell folders need the voxtell package, which is not installed ({exc.name}): "
                              f"{INSTALL}") from None


def decoder_configs() -> dict[int, dict]:
    """VoxTellModel's per-stage (channels, feature-map shape) table, which its hyperparameters index."""
    from voxtell.model.voxtell_model import VoxTellModel

    return VoxTellModel.DECODER_CONFIGS


def build_network(architecture: dict, hyper: dict) -> torch.nn.Module:
    """``VoxTellModel`` from plans.json's ``architecture`` and the text-decoder ``hyper``-parameters."""
    from voxtell.model.voxtell_model import VoxTellModel

    kwargs = dict(architecture["arch_kwargs"])
    for key in architecture.get("_kw_requires_import", ()):
        name = kwargs.get(key)
        if name is None:
            continue
        if not (isinstance(name, str) and name.startswith(LOCATABLE)) or pydoc.locate(name) is None:
            raise CheckpointError(f"plans.json names {key}={name!r}: only torch.nn and dynamic_network_architectures "
                                  "classes are accepted")
        kwargs[key] = pydoc.locate(name)
    return VoxTellModel(input_channels=1, **kwargs, deep_supervision=False, **hyper)


def make_predictor(network: torch.nn.Module, patch_size: list[int], device: torch.device,
                   bank: dict[str, np.ndarray] | None, text_encoder: str | None):
    """Upstream's ``VoxTellPredictor`` with the attributes its ``__init__`` would set, from our parts."""
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization
    from voxtell.inference.predictor import VoxTellPredictor

    predictor = VoxTellPredictor.__new__(VoxTellPredictor)
    predictor.device = device
    predictor.normalization = ZScoreNormalization(intensityproperties={})
    predictor.tile_step_size = 0.5
    predictor.perform_everything_on_device = True
    predictor._text_encoding_model = text_encoder
    predictor.tokenizer = predictor.text_backbone = None
    predictor.max_text_length = 8192
    predictor.embedding_bank = dict(bank) if bank else None
    predictor.patch_size = list(patch_size)
    predictor.network = network.eval()
    return predictor


def load_bank(path: str) -> dict[str, np.ndarray]:
    """The published ``text_embeddings.npz`` ({prompt: float16 vector}, read without pickle)."""
    from voxtell.utils.embedding_bank import load_embedding_bank

    try:
        return load_embedding_bank(path)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path} is not a VoxTell embedding bank (labels + embeddings arrays): {exc}") from None


def embed(predictor, prompt: str) -> torch.Tensor:
    """(1, 1, D) embedding of one prompt: the bank's vector, else Qwen3-Embedding (instruction, last token)."""
    return predictor.embed_text_prompts([prompt])


def predict(predictor, data: np.ndarray, embedding: torch.Tensor, cancel_requested: Callable[[], bool]) -> np.ndarray:
    """Upstream ``predict_single_image`` on ``data`` (z, y, x) in RAS: a uint8 (z, y, x) mask."""
    from voxtell.inference.predictor import InferenceCancelled

    try:
        seg = predictor.predict_single_image(data, text_embeddings=embedding,
                                             progress_callback=lambda done, total: not cancel_requested())
    except InferenceCancelled:
        raise Cancelled("cancelled by the user; the previous result is kept") from None
    return np.asarray(seg[0], dtype=np.uint8)
