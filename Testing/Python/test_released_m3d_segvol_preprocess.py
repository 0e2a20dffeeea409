"""Both families' preprocessing equals their upstream transforms on phantoms (goldens made by
Testing/Benchmarks/m3d_segvol_upstream.py goldens with monai 1.3 and the upstream code, at 8x32x32 instead of
32x256x256), read through our own reader from NIfTI files with LPS, RAS and oblique axes."""

from pathlib import Path

import numpy as np
import pytest
import torch

from medvlsam2.io.volume import read_volume
from medvlsam2.released.preprocess import m3d_input, segvol_input, segvol_paste, zoom_in_roi, zoom_out_to_crop

GOLDENS = Path(__file__).parent / "fixtures" / "m3d_segvol_preprocess_goldens.npz"
SIZE = (8, 32, 32)


@pytest.fixture(scope="module")
def goldens():
    return dict(np.load(GOLDENS))


@pytest.mark.parametrize("name", ["lps", "ras", "oblique"])
def test_preprocessing_matches_upstream(goldens, name, tmp_path):
    import nibabel as nib

    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(goldens[f"input_{name}"], goldens[f"affine_{name}"]), str(path))
    volume = read_volume(path)
    m3d, box = m3d_input(volume.array, SIZE)
    np.testing.assert_allclose(m3d.numpy(), goldens[f"m3d_{name}"], atol=1e-5)
    assert box.shape == volume.shape
    segvol, crop, geo = segvol_input(volume.array, SIZE)
    np.testing.assert_allclose(segvol.numpy(), goldens[f"segvol_{name}"], atol=1e-5)
    # SegVol's way back: the zoom-out input thresholded, resized back, lands on the bright voxels of the input
    mask = segvol_paste(zoom_out_to_crop(segvol - 0.5, crop.shape), geo)
    assert mask.shape == volume.shape
    bright = volume.array > np.percentile(volume.array, 60)
    assert (mask.astype(bool) & bright).sum() / max(mask.sum(), 1) > 0.9


def test_padding_and_crop_are_undone_exactly():
    rng = np.random.default_rng(0)
    a = np.full((6, 20, 12), -1000, np.float32)
    a[1:5, 4:16, 2:10] = rng.normal(100, 10, (4, 12, 8))
    image, crop, geo = segvol_input(a, SIZE)
    assert geo.padded == (8, 32, 32) and geo.pad_before == (1, 6, 10)
    (z0, y0, x0), (z1, y1, x1) = geo.box
    assert (z0, y0, x0) >= (2, 10, 12) and (z1, y1, x1) <= (6, 22, 20)  # inside the body, padding cut away
    mask = segvol_paste(zoom_out_to_crop(torch.ones(SIZE), crop.shape), geo)
    expected = np.zeros(a.shape, np.uint8)
    expected[z0 - 1:z1 - 1, y0 - 6:y1 - 6, x0 - 10:x1 - 10] = 1
    np.testing.assert_array_equal(mask, expected)


def test_zoom_in_roi_is_upstreams_box_widened_towards_a_window():
    logits = -torch.ones(40, 300, 300)
    logits[10:14, 100:120, 5:9] = 1
    # box (10..13, 100..119, 5..8); shortfalls 28, 236, 252 -> half on each side, clipped, end inclusive
    assert zoom_in_roi(logits, (32, 256, 256)) == (slice(0, 28), slice(0, 238), slice(0, 135))
    assert zoom_in_roi(-torch.ones(4, 4, 4), (2, 2, 2)) is None
