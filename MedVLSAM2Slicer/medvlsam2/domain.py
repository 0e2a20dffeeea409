"""Real-CT honesty: say when a volume is unlike what a phantom-trained model has ever seen.

``check_volume(model, volume)`` returns the differences (empty when none, or when the model was not trained
on phantoms); ``domain_warning`` turns them into the one message the CLI and the Slicer panel show.
"""

from __future__ import annotations

import numpy as np

# What the phantoms look like: ``data.synthetic.generate_case`` defaults (a test keeps these in step).
PHANTOM_SHAPE = (32, 128, 128)  # (k, j, i) voxels
PHANTOM_SPACING = (2.8, 2.8, 5.0)  # (i, j, k) mm
PHANTOM_HU_MAX = 1000.0  # densest phantom tissue is bone at 700 HU (+ noise); real cortical bone, teeth, metal exceed it
PHANTOM_HU_MIN = -1024.0
EXTENT_RATIO = (0.75, 1.5)  # accepted field of view relative to the phantoms' (about 36 x 36 x 16 cm)
SPACING_RATIO = (0.5, 2.0)
DENSE_FRACTION = 0.001  # more than 0.1 % of voxels above PHANTOM_HU_MAX counts as out of range
SAMPLE_VOXELS = 2_000_000  # statistics on a strided sample: bounded work on any volume


def check_volume(model, volume) -> list[str]:
    """Ways ``volume`` differs from the training phantoms of a phantom-trained ``model`` (else [])."""
    if getattr(model, "provenance", None) != "phantom-trained":
        return []
    reasons = []
    shape, spacing = tuple(volume.shape), tuple(float(s) for s in volume.spacing)
    extent = [n * s for n, s in zip(shape[::-1], spacing)]  # (i, j, k) mm
    trained = [n * s for n, s in zip(PHANTOM_SHAPE[::-1], PHANTOM_SPACING)]
    if any(not EXTENT_RATIO[0] <= e / t <= EXTENT_RATIO[1] for e, t in zip(extent, trained)):
        reasons.append(f"field of view {_mm(extent)} mm, the phantoms' is {_mm(trained)} mm")
    if any(not SPACING_RATIO[0] <= s / t <= SPACING_RATIO[1] for s, t in zip(spacing, PHANTOM_SPACING)):
        reasons.append(f"voxel spacing {_mm(spacing)} mm, the phantoms' is {_mm(PHANTOM_SPACING)} mm")
    step = max(1, int(np.ceil((volume.array.size / SAMPLE_VOXELS) ** (1 / 3))))
    sample = np.asarray(volume.array[::step, ::step, ::step], dtype=np.float32)
    dense = float((sample > PHANTOM_HU_MAX).mean())
    if dense > DENSE_FRACTION:
        reasons.append(f"{100 * dense:.1f} % of voxels above {PHANTOM_HU_MAX:.0f} HU (max {sample.max():.0f}); "
                       "the phantoms have none (no dense bone, teeth or metal)")
    if sample.min() > -500 or sample.max() < 100 or sample.min() < PHANTOM_HU_MIN - 100:
        reasons.append(f"intensities {sample.min():.0f}..{sample.max():.0f} do not look like CT Hounsfield units "
                       f"(air -1000, soft tissue 0..100)")
    return reasons


def domain_warning(model, volume) -> str | None:
    """One message for the user, or None when the volume is like the training data."""
    reasons = check_volume(model, volume)
    if not reasons:
        return None
    return ("this model was trained only on synthetic abdominal phantoms "
            f"({'x'.join(map(str, PHANTOM_SHAPE))} voxels at {_mm(PHANTOM_SPACING)} mm) and this CT is unlike them: "
            + "; ".join(reasons) + ". Expect wrong masks and answers. For real CT use a released model: "
            "--model medsam2-latest for clicks and boxes, a Med3DVLM folder for questions and reports")


def _mm(values) -> str:
    return " x ".join(f"{v:.4g}" for v in values)
