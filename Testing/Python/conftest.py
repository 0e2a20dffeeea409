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


@pytest.fixture
def without_priors(monkeypatch):
    """Random-weight models draw masks anywhere and the engine's anatomical priors would withhold them
    (test_plausibility covers the priors); plumbing tests run without them."""
    monkeypatch.setattr("medvlsam2.plausibility.vet.doubt", lambda *args, **kwargs: None)
