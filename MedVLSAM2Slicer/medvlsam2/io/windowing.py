"""CT window/level presets and windowing to [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class Window:
    """A CT display window: ``level`` (centre) and ``width`` in Hounsfield units."""

    level: float
    width: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.level) or not np.isfinite(self.width) or self.width <= 0:
            raise InputError(f"window width must be > 0 and finite (got level={self.level}, width={self.width})")

    @property
    def low(self) -> float:
        return self.level - self.width / 2

    @property
    def high(self) -> float:
        return self.level + self.width / 2


PRESETS: dict[str, Window] = {
    "abdomen": Window(level=40, width=400),
    "bone": Window(level=400, width=1800),
    "lung": Window(level=-600, width=1500),
    "brain": Window(level=40, width=80),
    "soft_tissue": Window(level=50, width=350),
}


def get_window(spec: str | Window | tuple[float, float]) -> Window:
    """Resolve a preset name, a ``Window``, a ``(level, width)`` pair or a "L,W" string."""
    if isinstance(spec, Window):
        return spec
    if isinstance(spec, tuple):
        return Window(float(spec[0]), float(spec[1]))
    if spec in PRESETS:
        return PRESETS[spec]
    if isinstance(spec, str) and "," in spec:
        try:
            level, width = (float(v) for v in spec.split(","))
        except ValueError:
            raise InputError(f"custom window must be 'level,width' in HU, e.g. '40,400' (got {spec!r})") from None
        return Window(level, width)
    raise InputError(f"unknown window {spec!r}; use one of {sorted(PRESETS)} or 'level,width'")


def apply_window(array: np.ndarray, window: str | Window | tuple[float, float]) -> np.ndarray:
    """Clip HU values to the window and scale to float32 in [0, 1]."""
    w = get_window(window)
    out = (np.asarray(array, dtype=np.float32) - w.low) / w.width
    return np.clip(out, 0.0, 1.0, out=out)
