"""Stage-2 step time from images vs from the feature cache (``feature_cache:``), and the cache's size per phantom.

    nice -n 10 python Testing/Benchmarks/train_cache.py [--config MedVLSAM2Slicer/configs/train/demo_stage2_cpu_findings.yaml]
        [--seeds 20000 20006] [--steps 4] [--rounds 1] [--threads 1] [--out train_cache.json]

Runs the recipe (from its ``init_from`` bundle, the demo weights by default) for ``--steps`` steps on a few training
phantoms, once from images and once from a feature cache built for those phantoms (the build is timed apart),
alternating ``--rounds`` times so both see the same machine load. Per run, each the median over the steps after
the first: ``step_s`` (wall time of the model step: forward, backward, optimizer; the loop's metrics), the wall
time per step including data loading (differences of ``elapsed_s``), the process CPU time per step including
data (``cpu_per_step_s``: all threads; far less sensitive than wall time to other processes on shared cores) and
the CPU time inside the encoder calls (``encoder_cpu_per_step_s``: the 3D encoder and SAM2's image encoder from
images; from the cache, only the stacking of the read SAM2 features), which bounds what caching can save. ``uptime`` before and
after. ``--threads 1`` (the default) makes the CPU time a measure of work: with several threads on busy cores,
OpenMP threads spin while they wait and count that as CPU time. The cached run freezes the decoder's conv_s0/conv_s1 (their outputs are cached). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedVLSAM2Slicer"))
os.environ.setdefault("TQDM_DISABLE", "1")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


ENCODER_CPU = [0.0]  # process CPU seconds inside the encoder calls (or cache reads) since the last log line


def _timed(fn):
    def wrapper(*args, **kwargs):
        tic = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            ENCODER_CPU[0] += time.process_time() - tic
    return wrapper


def instrument() -> None:
    """Log the process CPU time and the encoder CPU time with every metrics line (a measurement hook only)."""
    from medvlsam2.modeling.medvlsam2 import MedVLSAM2
    from medvlsam2.training import loop, stage2

    stage2.encode_frames = _timed(stage2.encode_frames)
    MedVLSAM2.encode_patches = _timed(MedVLSAM2.encode_patches)
    log = loop._log

    def with_cpu(path, record):
        log(path, {**record, "cpu_s": time.process_time(), "encoder_cpu_s": ENCODER_CPU[0]})
        ENCODER_CPU[0] = 0.0
    loop._log = with_cpu


def run(cfg_path: str, work: Path, name: str, seeds: list[int], steps: int, cache: Path | None) -> dict:
    from medvlsam2.training.config import load_train_config
    from medvlsam2.training.loop import train

    cfg = load_train_config(cfg_path, output_dir=str(work / name), cache_dir=str(work / "cases"),
                            log_every=1, checkpoint_every=10_000, checkpoint_every_s=1e9,
                            time_limit_s=0, feature_cache=str(cache) if cache else None)
    cfg.datasets = tuple(type(d)(**{**vars(d), "seeds": tuple(seeds)}) for d in cfg.datasets)
    if cfg.init_from and not Path(cfg.init_from).is_absolute():
        cfg.init_from = str(ROOT / cfg.init_from)
    tic = time.time()
    summary = train(cfg.validate(), max_steps=steps, progress=False)
    rows = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
    walls = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(rows, rows[1:])]
    cpus = [b["cpu_s"] - a["cpu_s"] for a, b in zip(rows, rows[1:])]
    return {"step_s": round(statistics.median(r["step_s"] for r in rows[1:]), 3),
            "wall_per_step_s": round(statistics.median(walls), 3), "cpu_per_step_s": round(statistics.median(cpus), 3),
            "encoder_cpu_per_step_s": round(statistics.median(r["encoder_cpu_s"] for r in rows[1:]), 3),
            "first_step_s": rows[0]["step_s"],
            "setup_s": summary["data_seconds"], "total_s": round(time.time() - tic, 1),
            "loss": [r["loss"] for r in rows], **({"feature_cache": summary["feature_cache"]} if cache else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "MedVLSAM2Slicer/configs/train/demo_stage2_cpu_findings.yaml"))
    ap.add_argument("--seeds", type=int, nargs=2, default=[20000, 20006], help="training phantoms [first, last)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1, help="image / cache runs alternated this many times")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default="train_cache.json")
    args = ap.parse_args()
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    instrument()
    result = {"config": args.config, "seeds": args.seeds, "steps": args.steps, "threads": torch.get_num_threads(),
              "uptime_before": uptime(), "images": [], "cached": []}
    with tempfile.TemporaryDirectory(prefix="train_cache_") as tmp:
        work, cache = Path(tmp), Path(tmp) / "features"
        for r in range(args.rounds):
            result["images"].append(run(args.config, work, f"images{r}", args.seeds, args.steps, None))
            print("images", json.dumps(result["images"][-1]), flush=True)
            result["cached"].append(run(args.config, work, f"cached{r}", args.seeds, args.steps, cache))
            print("cached", json.dumps(result["cached"][-1]), flush=True)
        files = sorted(cache.glob("*.safetensors"))
        entries = json.loads((cache / "manifest.json").read_text())["entries"]
        result["cache_mb_per_phantom"] = round(sum(e["bytes"] for e in entries.values()) / len(entries) / 2**20, 2)
        result["cache_mb_total"] = round(sum(f.stat().st_size for f in files) / 2**20, 1)
        result["slices_per_phantom"] = statistics.median(e["slices"] for e in entries.values())
    build = result["cached"][0]["feature_cache"]
    result["build_s_per_phantom"] = round(build["encode_seconds"] / max(1, build["encoded"]), 2)
    for key in ("step_s", "wall_per_step_s", "cpu_per_step_s"):
        before = statistics.median(r[key] for r in result["images"])
        after = statistics.median(r[key] for r in result["cached"])
        result[f"{key}_speedup"] = round(before / after, 2)
    result["uptime_after"] = uptime()
    images_cpu = statistics.median(r["cpu_per_step_s"] for r in result["images"])
    encoder_cpu = statistics.median(r["encoder_cpu_per_step_s"] for r in result["images"])
    result["encoder_share_of_image_step"] = round(encoder_cpu / images_cpu, 3)
    print(f"CPU per step: {images_cpu:.2f} s from images (encoders {encoder_cpu:.2f} s, "
          f"{100 * result['encoder_share_of_image_step']:.0f} %), "
          f"{statistics.median(r['cpu_per_step_s'] for r in result['cached']):.2f} s cached "
          f"({result['cpu_per_step_s_speedup']}x)")
    print(f"model step: {statistics.median(r['step_s'] for r in result['images']):.2f} s from images, "
          f"{statistics.median(r['step_s'] for r in result['cached']):.2f} s cached ({result['step_s_speedup']}x); "
          f"wall per step incl. data: {result['wall_per_step_s_speedup']}x; cache {result['cache_mb_per_phantom']} MB "
          f"per phantom ({result['slices_per_phantom']} slices), built in {result['build_s_per_phantom']} s each")
    print("load:", result["uptime_before"], "|", result["uptime_after"])
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
