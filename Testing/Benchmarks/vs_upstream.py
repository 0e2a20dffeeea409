"""Our in-memory volume session vs the sam2 package's documented JPEG-folder route, in one run.

    python Testing/Benchmarks/vs_upstream.py [--model Resources/DemoWeights] [--seed 100000] [--out r.json]
    python Testing/Benchmarks/vs_upstream.py --model base --image-size 512 --head-ct --slices 32

Both routes run the same SAM2 weights on the same CT with the same click and propagate both ways.
Upstream: slices windowed to 8-bit, written as JPEG frames, ``init_state(video_path=...)``,
``add_new_points_or_box``, ``propagate_in_video`` forward and reverse. Ours: ``Session``.
Prints wall time of each route, their ratio, and the Dice between their masks (JPEG's 8-bit lossy
frames are the only input difference). Not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def upstream_route(segmenter_cfg, state_dict, volume, window, click_ijk) -> tuple[np.ndarray, float]:
    from PIL import Image
    from sam2.build_sam import build_sam2_video_predictor

    from medvlsam2.io.windowing import apply_window

    predictor = build_sam2_video_predictor(segmenter_cfg.sam2_config, ckpt_path=None, device="cpu", mode="eval",
                                           hydra_overrides_extra=[f"++model.image_size={segmenter_cfg.image_size}",
                                                                  *segmenter_cfg.hydra_overrides])
    predictor.fill_hole_area = 0
    predictor.load_state_dict(state_dict, strict=True)
    mask = np.zeros(volume.shape, np.uint8)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        gray = (apply_window(volume.array, window) * 255).round().astype(np.uint8)
        for k, frame in enumerate(gray):
            Image.fromarray(frame).convert("RGB").save(Path(tmp) / f"{k:05d}.jpg", quality=95)
        with torch.inference_mode():
            state = predictor.init_state(video_path=tmp)
            i, j, k = click_ijk
            predictor.add_new_points_or_box(state, frame_idx=k, obj_id=1, points=[[i, j]], labels=[1])
            for reverse in (False, True):
                for f, _, logits in predictor.propagate_in_video(state, start_frame_idx=k, reverse=reverse):
                    mask[f] = (logits[0, 0] > 0).cpu().numpy()
    return mask, time.perf_counter() - start


def our_route(model, volume, click_ijk) -> tuple[np.ndarray, float]:
    from medvlsam2.session import Session

    start = time.perf_counter()
    session = Session(model, volume)
    obj = session.add_object()
    session.add_points(obj, [list(click_ijk)], [1])
    session.propagate(obj)
    return session.mask(obj), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Resources/DemoWeights", help="bundle folder or named config")
    parser.add_argument("--image-size", type=int, help="override the segmenter's image size (named configs)")
    parser.add_argument("--seed", type=int, default=100000, help="synthetic phantom seed")
    parser.add_argument("--head-ct", action="store_true", help="the Debian head CT instead of a phantom")
    parser.add_argument("--slices", type=int, help="keep this many central slices")
    parser.add_argument("--out")
    args = parser.parse_args()

    import os

    os.environ.setdefault("TQDM_DISABLE", "1")
    from medvlsam2.factory import load_model
    from medvlsam2.config import get_config

    if args.image_size and not Path(args.model).is_dir():
        cfg = get_config(args.model)
        cfg.segmenter.image_size = args.image_size
        from medvlsam2.modeling.medvlsam2 import MedVLSAM2

        torch.manual_seed(0)
        model = MedVLSAM2.from_config(cfg).eval()
    else:
        model = load_model(args.model)
    if args.head_ct:
        from headct import read_ct

        volume, window, click = read_ct(), "brain", None
    else:
        from medvlsam2.data.synthetic import generate_case

        case = generate_case(args.seed)
        volume, window = case.volume, model.config.segmenter.window
        k, j, i = np.argwhere(case.labels == 1).mean(0).round().astype(int)  # liver centre
        click = (int(i), int(j), int(k))
    if args.slices:
        k0 = max(0, volume.shape[0] // 2 - args.slices // 2)
        volume = type(volume)(volume.array[k0:k0 + args.slices], volume.spacing, volume.origin, volume.direction)
    if click is None:
        click = (volume.shape[2] // 2, volume.shape[1] // 2, volume.shape[0] // 2)
    click = (click[0], click[1], min(click[2], volume.shape[0] - 1))
    model.config.segmenter.window = window

    ours, t_ours = our_route(model, volume, click)
    theirs, t_up = upstream_route(model.config.segmenter, model.segmenter.state_dict(), volume, window, click)
    total = int(ours.sum()) + int(theirs.sum())
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "model": args.model, "image_size": model.config.segmenter.image_size, "volume_shape": list(volume.shape),
        "ours_s": round(t_ours, 2), "upstream_jpeg_s": round(t_up, 2), "upstream_over_ours": round(t_up / t_ours, 2),
        "mask_dice_ours_vs_upstream": round(1.0 if total == 0 else 2 * int((ours & theirs).sum()) / total, 4),
        "voxels_ours": int(ours.sum()), "voxels_upstream": int(theirs.sum()),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
