"""The engine on a CUDA GPU (skipped without one): the demo weights segment as on the CPU, at bf16 autocast.

Run on the GPU machine with ``scripts/gpu_checks.sh`` (with the GPU benchmark rows of issue 13).
"""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

STRUCTURES = ("liver", "right kidney")


def _box_masks(model, case):
    from medvlsam2.evaluation.interactive import initial_box
    from medvlsam2.session import Session

    masks = {}
    with Session(model, case.volume) as session:
        for name in STRUCTURES:
            obj = session.add_object(name)
            session.add_box(obj, initial_box(case.mask(name)))
            session.propagate(obj)
            masks[name] = session.mask(obj) > 0
        entries = [session.feature_cache.get(k) for k in range(case.volume.shape[0])]
        devices = {e.fpn[0].device.type for e in entries if e is not None}
        return masks, session.autocast_dtype, devices


def test_demo_weights_segment_on_the_gpu_as_on_the_cpu():
    from medvlsam2.cli.common import demo_weights_folder
    from medvlsam2.data.synthetic import generate_case
    from medvlsam2.evaluation.seg_metrics import dice
    from medvlsam2.factory import load_model

    case = generate_case(100000)
    cpu, cpu_dtype, _ = _box_masks(load_model(str(demo_weights_folder()), "cpu"), case)
    gpu, gpu_dtype, devices = _box_masks(load_model(str(demo_weights_folder()), "cuda"), case)
    assert cpu_dtype is None and gpu_dtype in (torch.bfloat16, torch.float16)  # auto: fp32 on CPU, autocast on CUDA
    assert devices == {"cuda"}  # features stay on the GPU
    for name in STRUCTURES:
        ref = case.mask(name) > 0
        assert dice(gpu[name], ref) >= 0.9, name
        assert dice(gpu[name], cpu[name]) >= 0.97, name


def test_background_encoding_and_close_on_the_gpu():
    from medvlsam2.config import tiny
    from medvlsam2.modeling.medvlsam2 import MedVLSAM2
    from medvlsam2.session import Session

    from phantoms import ellipsoid_volume

    torch.manual_seed(0)
    model = MedVLSAM2.from_config(tiny()).to("cuda").eval()
    volume = ellipsoid_volume((8, 32, 32), (4, 16, 16), (3.5, 8, 9))
    session = Session(model, volume, prefetch=True)
    session._prefetcher.join()
    assert session.feature_cache.encoder_calls == 8
    assert {session.feature_cache.get(k).dtype for k in range(8)} == {session.autocast_dtype}
    obj = session.add_object()
    session.add_points(obj, [[16, 16, 4]], [1])
    session.propagate(obj)
    assert session.feature_cache.encoder_calls == 8  # nothing encoded twice
    assert session.mask(obj).dtype == np.uint8
    session.close()
    assert len(session.feature_cache) == 0
