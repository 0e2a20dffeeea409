"""Encoder preprocessing and the exact inverse mapping of masks."""

import numpy as np
import pytest

from medvlsam2.errors import InputError
from medvlsam2.io.encoder_input import to_encoder_tensor
from medvlsam2.io.volume import Volume


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_tensor_shape_range_and_grid_aligned_round_trip():
    vol = Volume(np.full((16, 64, 64), 40, np.int16))
    tensor, mapping = to_encoder_tensor(vol, (8, 32, 32))
    assert tuple(tensor.shape) == (1, 1, 8, 32, 32)
    assert float(tensor.min()) >= 0 and float(tensor.max()) <= 1
    np.testing.assert_allclose(tensor.numpy(), 0.5, atol=1e-6)
    block = np.zeros((16, 64, 64), np.uint8)
    block[4:12, 16:48, 8:40] = 1  # aligned to the 2x grid
    assert np.array_equal(mapping.mask_to_volume(mapping.volume_to_encoder(block)), block)


def test_random_blob_round_trip_and_bad_shapes():
    k, j, i = np.mgrid[:20, :50, :70]
    blob = (((k - 10) / 7) ** 2 + ((j - 25) / 15) ** 2 + ((i - 30) / 20) ** 2 < 1).astype(np.uint8)
    _, mapping = to_encoder_tensor(Volume(blob.astype(np.int16) * 100), (16, 64, 64))
    back = mapping.mask_to_volume(mapping.volume_to_encoder(blob))
    assert back.shape == blob.shape and dice(back, blob) > 0.9
    with pytest.raises(InputError, match="does not match"):
        mapping.mask_to_volume(np.zeros((3, 3, 3)))
    with pytest.raises(InputError, match="three positive"):
        to_encoder_tensor(Volume(blob), (0, 4, 4))
