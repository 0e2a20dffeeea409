"""Device choice (auto | cuda | mps | cpu), the inference precision (autocast dtype), and a readable GPU OOM error."""

from __future__ import annotations

import contextlib
import functools

import torch

from ..config import PRECISIONS
from ..errors import InputError

DEVICES = ("auto", "cuda", "mps", "cpu")
OOM_ADVICE = ("the GPU ran out of memory. Fixes, in order: a smaller segmenter image size (a 512 px config instead "
              "of 1024), a smaller feature cache (--cache-mb, or run on --device cpu), or fewer slices "
              "(propagate a slice range instead of the whole volume)")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; asking for an absent device is an error that says so."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise InputError(f"device must be one of {DEVICES} (or cuda:N), got {name!r}")
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("CUDA was requested but this PyTorch has no usable CUDA GPU "
                         f"(torch {torch.__version__}); install a CUDA build of torch or use --device cpu")
    if name == "mps" and not has_mps:
        raise InputError("Apple MPS was requested but is not available here; use --device cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for inference at ``precision`` on ``device`` (None: fp32, no autocast).

    ``auto`` is bf16 on CUDA (fp16 on GPUs without bf16) and fp32 on CPU and MPS (see docs/ARCHITECTURE.md).
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    cuda = device.type == "cuda"
    if precision == "auto":
        return (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else None
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise InputError("this GPU cannot compute in bf16; use --precision fp16 or fp32")
    if precision == "fp16" and not cuda:
        raise InputError(f"fp16 runs only on a CUDA GPU, not on {device.type}; use --precision fp32 (or bf16 on a CPU "
                         "with native bf16)")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` at ``dtype``, or nothing for fp32 (None)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def translate_oom(fn):
    """Decorator: a GPU out-of-memory error becomes an ``InputError`` naming the options that fix it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except torch.OutOfMemoryError:
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
            raise InputError(OOM_ADVICE) from None

    return wrapper
