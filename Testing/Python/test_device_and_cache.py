"""Device choice, inference precision, the GPU out-of-memory message, and the megabyte-bounded bf16 feature cache."""

import numpy as np
import pytest
import torch

from medvlsam2.errors import InputError
from medvlsam2.session import Session
from medvlsam2.factory import load_model
from medvlsam2.utils.device import OOM_ADVICE, autocast_dtype, resolve_device, translate_oom

from phantoms import ellipsoid_volume

K = 8


def _volume():
    return ellipsoid_volume((K, 32, 32), (4, 16, 16), (3.5, 8, 9))


def _segment(session):
    obj = session.add_object()
    session.add_points(obj, [[16, 16, 4]], [1])
    session.propagate(obj)
    return obj


def test_cache_reuses_features_within_budget_and_evicts_beyond(model, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    big = Session(model, _volume(), cache_mb=4096)
    obj = _segment(big)
    cache = big.feature_cache
    assert cache.encoder_calls == K and len(cache) == K
    assert all(f.dtype == torch.bfloat16 for k in range(K) for f in cache.get(k).fpn)
    per_slice = cache.nbytes / K
    calls = cache.encoder_calls
    big.propagate(obj)
    assert cache.encoder_calls == calls  # nothing recomputed
    reference = big.mask(obj)

    small = Session(model, _volume(), cache_mb=2.5 * per_slice / 2**20)
    obj = _segment(small)
    assert len(small.feature_cache) == 2 and small.feature_cache.nbytes <= 2.5 * per_slice
    calls = small.feature_cache.encoder_calls
    small.propagate(obj)
    assert small.feature_cache.encoder_calls > calls  # evicted slices had to be encoded again
    assert np.array_equal(small.mask(obj), reference)  # and the result does not depend on the budget
    assert len(cache) == K  # the small session's evictions never touched the first session's features


def test_bad_cache_budget_is_refused(model):
    with pytest.raises(InputError, match="cache_mb"):
        Session(model, _volume(), cache_mb=0)


def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    with pytest.raises(InputError, match="device must be one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA was requested"):
            resolve_device("cuda")


def test_precision_choice():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is None and autocast_dtype(cpu, "fp32") is None  # auto is fp32 on a CPU
    assert autocast_dtype(cpu, "bf16") == torch.bfloat16
    if torch.cuda.is_available():
        assert autocast_dtype(torch.device("cuda")) in (torch.bfloat16, torch.float16)
    with pytest.raises(InputError, match="fp16 runs only on a CUDA GPU"):
        autocast_dtype(cpu, "fp16")
    with pytest.raises(InputError, match="precision must be one of"):
        autocast_dtype(cpu, "half")


def test_load_model_sets_and_checks_the_precision(tmp_path):
    assert load_model("tiny", precision="bf16").segmenter.precision == "bf16"
    with pytest.raises(InputError, match="fp16 runs only"):  # refused before any file is read
        load_model(str(tmp_path / "missing.pt"), precision="fp16")


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_session_computes_at_the_models_precision(model, monkeypatch, precision, dtype):
    """Clicks and background encoding (its own thread: autocast is per thread) both run under the precision:
    the image encoder's output dtype, kept with each cached slice, says which."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setattr(model.segmenter, "precision", precision)
    with Session(model, _volume()) as session:
        obj = session.add_object()
        session.add_points(obj, [[16, 16, 4]], [1])
        assert session.feature_cache.get(4).dtype == dtype
        assert session.mask(obj).dtype == np.uint8
    with Session(model, _volume(), prefetch=True) as session:
        session._prefetcher.join()
        assert session.feature_cache.encoder_calls == K
        assert {session.feature_cache.get(k).dtype for k in range(K)} == {dtype}


def test_out_of_memory_becomes_advice():
    @translate_oom
    def explode():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    with pytest.raises(InputError) as info:
        explode()
    assert str(info.value) == OOM_ADVICE and "image size" in OOM_ADVICE and "slice range" in OOM_ADVICE
