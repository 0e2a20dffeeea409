"""Interactive segmentation timing on a real CT (prints numbers and writes JSON; not a test).

    python Testing/Benchmarks/interactive.py [--image CT.nii.gz] [--image-size 512] [--bf16] [--slices N] [--out result.json]
    python Testing/Benchmarks/interactive.py --model MedSAM2_latest.pt [--write-medsam2-shaped] ...

Without --image it uses the Debian invesalius head CT (fetched with apt-get on first use).
Without --model the segmenter is SAM2.1 hiera-t inside the tiny config (random weights: timing and
memory only, not quality). ``--model`` takes any factory spec (a released .pt, a manifest name, a
bundle); with ``--write-medsam2-shaped`` a MedSAM2-shaped file is first written at that path if missing:
the official format (``{"model": state_dict}`` of SAM2.1 hiera-t from the sam2 package's config, random
weights), so the run is the released-model path (factory, native 512 px) without the real weights.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image")
    parser.add_argument("--model", help="factory spec (e.g. a MedSAM2_latest.pt file); default: tiny config's SAM2")
    parser.add_argument("--write-medsam2-shaped", action="store_true",
                        help="write a random official-format hiera-t file at --model first (if missing)")
    parser.add_argument("--image-size", type=int, default=None, help="default: 512, or the model's native size")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast on the CPU")
    parser.add_argument("--slices", type=int, help="keep only this many central slices (for 1024 px on a small machine)")
    parser.add_argument("--out")
    args = parser.parse_args()

    from headct import ensure_head_ct
    from medvlsam2.config import SegmenterConfig, tiny
    from medvlsam2.io.volume import read_volume
    from medvlsam2.modeling.medvlsam2 import MedVLSAM2
    from medvlsam2.session import Session

    volume = read_volume(args.image or ensure_head_ct())
    if args.slices:
        k0 = max(0, volume.shape[0] // 2 - args.slices // 2)
        volume = type(volume)(volume.array[k0:k0 + args.slices], volume.spacing, volume.origin, volume.direction)
    window = "brain" if not args.image else "abdomen"
    torch.manual_seed(0)
    if args.model:
        from pathlib import Path

        from medvlsam2.factory import load_model

        if args.write_medsam2_shaped and not Path(args.model).exists():
            import sys

            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Python"))
            from official_sam2 import write_official_checkpoint

            write_official_checkpoint(Path(args.model))
        t = time.perf_counter()
        model = load_model(args.model, image_size=args.image_size, window=window)
        load_s = time.perf_counter() - t
    else:
        config = tiny()
        config.segmenter = SegmenterConfig(image_size=args.image_size or 512, window=window)
        model, load_s = MedVLSAM2.from_config(config).eval(), None
    image_size = model.segmenter.image_size
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    k_mid, rows, cols = volume.shape[0] // 2, volume.shape[1], volume.shape[2]
    timings = {}
    with autocast:
        t = time.perf_counter()
        session = Session(model, volume)
        obj = session.add_object("target")
        timings["open_s"] = time.perf_counter() - t
        t = time.perf_counter()
        session.add_points(obj, [[cols // 2, rows // 2, k_mid]], [1])
        timings["first_click_s"] = time.perf_counter() - t
        t = time.perf_counter()
        session.propagate(obj)
        timings["propagate_s"] = time.perf_counter() - t
        calls = session.feature_cache.encoder_calls
        t = time.perf_counter()
        session.add_points(obj, [[cols // 4, rows // 4, min(k_mid + 5, volume.shape[0] - 1)]], [-1])
        timings["refine_click_s"] = time.perf_counter() - t
        t = time.perf_counter()
        session.propagate(obj)
        timings["repropagate_s"] = time.perf_counter() - t
        new_encoder_calls = session.feature_cache.encoder_calls - calls
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "model": getattr(model, "description", "tiny config"), "load_s": load_s and round(load_s, 3),
        "volume_shape": list(volume.shape), "image_size": image_size, "dtype": "bf16" if args.bf16 else "fp32",
        "load_average": [round(x, 2) for x in __import__("os").getloadavg()],
        **{k: round(v, 3) for k, v in timings.items()},
        "per_slice_propagate_s": round(timings["propagate_s"] / volume.shape[0], 3),
        "repropagate_over_propagate": round(timings["repropagate_s"] / timings["propagate_s"], 3),
        "encoder_calls_during_repropagation": new_encoder_calls,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
