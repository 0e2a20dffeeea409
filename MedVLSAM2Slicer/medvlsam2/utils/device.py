"""Device choice (auto | cuda | mps | cpu), the autocast dtype each supports, and a readable GPU OOM error."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

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


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is slower than fp32."""
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype worth using on ``device`` (None: stay in fp32)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


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
