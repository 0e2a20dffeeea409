"""Interactive segmentation timing on a real CT (prints numbers and writes JSON; not a test).

    python Testing/Benchmarks/interactive.py [--image CT.nii.gz] [--image-size 512] [--precision auto|fp32|bf16]
        [--device auto] [--slices N | --resample-slices N] [--latency-clicks 20] [--out result.json]
    python Testing/Benchmarks/interactive.py --model MedSAM2_latest.pt [--write-medsam2-shaped] ...
    # issue 13's GPU rows (click < 50 ms, 300-slice propagation at 512 px < 3 s), one call on the GPU machine:
    python Testing/Benchmarks/interactive.py --device cuda --model /tmp/medsam2.pt --write-medsam2-shaped \
        --resample-slices 300 --out gpu.json

Without --image it uses the Debian invesalius head CT (fetched with apt-get on first use).
Without --model the segmenter is SAM2.1 hiera-t inside the tiny config (random weights: timing and
memory only, not quality). ``--model`` takes any factory spec (a released .pt, a manifest name, a
bundle); with ``--write-medsam2-shaped`` a MedSAM2-shaped file is first written at that path if missing:
the official format (``{"model": state_dict}`` of SAM2.1 hiera-t from the sam2 package's config, random
weights), so the run is the released-model path (factory, native 512 px) without the real weights.
``--slices N`` keeps the N central slices; ``--resample-slices N`` interpolates the volume to N slices
(e.g. 300, a thin-slice abdomen's count). Propagation runs over every slice (the stop rule is off: random
weights would end it anywhere), so its time is the whole volume's. Click latency is the median (and p90)
of ``--latency-clicks`` corrective clicks on the propagated object, each timed alone (CUDA synchronised).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="CT file or folder, or .npz (hu, spacing); default: the head CT")
    parser.add_argument("--window", help="CT window (default: brain for the head CT, else abdomen)")
    parser.add_argument("--model", help="factory spec (e.g. a MedSAM2_latest.pt file); default: tiny config's SAM2")
    parser.add_argument("--write-medsam2-shaped", action="store_true",
                        help="write a random official-format hiera-t file at --model first (if missing)")
    parser.add_argument("--image-size", type=int, default=None, help="default: 512, or the model's native size")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    parser.add_argument("--precision", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--slices", type=int, help="keep only this many central slices (for 1024 px on a small machine)")
    size.add_argument("--resample-slices", type=int, help="interpolate the volume to this many slices (e.g. 300)")
    parser.add_argument("--latency-clicks", type=int, default=20, help="corrective clicks timed one by one")
    parser.add_argument("--out")
    args = parser.parse_args()

    import dataclasses
    from pathlib import Path

    import numpy as np
    from scipy import ndimage

    from headct import read_ct
    from medvlsam2.config import SegmenterConfig, tiny
    from medvlsam2.factory import load_model
    from medvlsam2.modeling.medvlsam2 import MedVLSAM2
    from medvlsam2.session import Session
    from medvlsam2.utils.device import resolve_device

    device = resolve_device(args.device)
    volume = read_ct(args.image)
    if args.slices:
        k0 = max(0, volume.shape[0] // 2 - args.slices // 2)
        volume = dataclasses.replace(volume, array=volume.array[k0:k0 + args.slices])
    elif args.resample_slices:
        factor = args.resample_slices / volume.shape[0]
        array = ndimage.zoom(volume.array.astype(np.float32), (factor, 1, 1), order=1).astype(np.int16)
        spacing = (*volume.spacing[:2], volume.spacing[2] * volume.shape[0] / array.shape[0])
        volume = dataclasses.replace(volume, array=array, spacing=spacing)
    window = args.window or ("brain" if not args.image else "abdomen")
    torch.manual_seed(0)
    if args.model:
        if args.write_medsam2_shaped and not Path(args.model).exists():
            import sys

            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Python"))
            from official_sam2 import write_official_checkpoint

            write_official_checkpoint(Path(args.model))
        t = time.perf_counter()
        model = load_model(args.model, str(device), image_size=args.image_size, window=window, precision=args.precision)
        load_s = time.perf_counter() - t
    else:
        config = tiny()
        config.segmenter = SegmenterConfig(image_size=args.image_size or 512, window=window)
        model, load_s = MedVLSAM2.from_config(config).to(device).eval(), None
        model.segmenter.precision = args.precision
    seg = model.segmenter
    seg.config = dataclasses.replace(seg.config, stop_after_slices=10**6, propagation="memory")  # every slice runs

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t

    k_mid, rows, cols = volume.shape[0] // 2, volume.shape[1], volume.shape[2]
    timings = {}
    session, timings["open_s"] = timed(lambda: Session(model, volume))
    obj = session.add_object("target")
    _, timings["first_click_s"] = timed(lambda: session.add_points(obj, [[cols // 2, rows // 2, k_mid]], [1]))
    result, timings["propagate_s"] = timed(lambda: session.propagate(obj))
    slices_propagated = len(result.scores)
    calls = session.feature_cache.encoder_calls
    _, timings["refine_click_s"] = timed(lambda: session.add_points(
        obj, [[cols // 4, rows // 4, min(k_mid + 5, volume.shape[0] - 1)]], [-1]))
    _, timings["repropagate_s"] = timed(lambda: session.propagate(obj))
    new_encoder_calls = session.feature_cache.encoder_calls - calls
    rng = np.random.default_rng(0)
    latencies = []
    for n in range(args.latency_clicks):  # corrective clicks on encoded slices, as a user makes them
        k = int(rng.integers(0, volume.shape[0]))
        point = [[int(rng.integers(cols // 4, 3 * cols // 4)), int(rng.integers(rows // 4, 3 * rows // 4)), k]]
        latencies.append(timed(lambda: session.add_points(obj, point, [1 if n % 2 == 0 else -1]))[1])
    session.close()
    warm = Session(model, volume, prefetch=True)  # the first propagation once background encoding is done
    warm._prefetcher.join()
    warm_obj = warm.add_object("target")
    warm.add_points(warm_obj, [[cols // 2, rows // 2, k_mid]], [1])
    _, timings["propagate_after_background_encoding_s"] = timed(lambda: warm.propagate(warm_obj))
    warm.close()
    memory = {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    if device.type == "cuda":
        memory["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    click_ms = sorted(1000 * x for x in latencies)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "model": getattr(model, "description", "tiny config"), "load_s": load_s and round(load_s, 3),
        "volume_shape": list(volume.shape), "image_size": seg.image_size, "precision": args.precision,
        "autocast_dtype": str(session.autocast_dtype), "load_average": [round(x, 2) for x in os.getloadavg()],
        **{k: round(v, 3) for k, v in timings.items()},
        "slices_propagated": slices_propagated,
        "per_slice_propagate_s": round(timings["propagate_s"] / slices_propagated, 4),
        "repropagate_over_propagate": round(timings["repropagate_s"] / timings["propagate_s"], 3),
        "encoder_calls_during_repropagation": new_encoder_calls,
        "click_latency_ms": {"median": round(float(np.median(click_ms)), 1),
                             "p90": round(float(np.percentile(click_ms, 90)), 1), "n": len(click_ms)} if click_ms else None,
        **memory,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
