"""Fixtures shared by the engine tests."""

import pytest


@pytest.fixture(scope="module")
def model():
    """The tiny config with random weights (seed 0), in eval mode; a test module may override it."""
    import torch

    from medvlsam2.config import tiny
    from medvlsam2.modeling.medvlsam2 import MedVLSAM2

    torch.manual_seed(0)
    return MedVLSAM2.from_config(tiny()).eval()
