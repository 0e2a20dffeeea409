"""Training data pipeline on CPU: peak RSS of a training run with a small and a large dataset (same steps),
and data-loading throughput (cases/s) with 0 and 2 DataLoader workers.

    python Testing/Benchmarks/train_data.py [--small 10] [--large 200] [--steps 6] [--shape 16 64 64] [--out train_data.json]

Writes both datasets as MSD folders (dataset.json + NIfTI + report / VQA / referring indexes) of synthetic
phantoms, then runs ``medvlsam2 train CONFIG --max-steps N`` (tiny model, stage 2, one process each) and
reads each child's peak RSS (``ru_maxrss``). Throughput: ``training.stream`` batches of the large dataset,
first from a cold cache (read + preprocess + write) then warm (read back), per worker count. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "MedVLSAM2Slicer"))

ORGANS = {1: "liver", 2: "spleen", 3: "right kidney", 4: "left kidney"}


def write(folder: Path, n: int, shape: tuple[int, int, int]) -> Path:
    from medvlsam2.data.synthetic import generate_case
    from medvlsam2.data.writers import write_dataset

    k, j, i = shape
    spacing = (2.8 * 128 / i, 2.8 * 128 / j, 5.0 * 32 / k)
    return write_dataset((generate_case(s, shape=shape, spacing=spacing) for s in range(n)), folder, ORGANS)


def config(data: Path, work: Path, steps: int, workers: int = 0) -> dict:
    return {"stage": 2, "model": "tiny", "datasets": [{"reader": "msd", "path": str(data)}], "cases_per_step": 4,
            "workers": workers, "cache_dir": str(work / "cache"), "output_dir": str(work / "run"), "max_steps": steps,
            "text_cases": 2, "seg_clips": 2, "interactive_clips": 1, "clip_len": 3, "probes": 2, "log_every": 1,
            "checkpoint_every": 1000, "checkpoint_every_s": 1e9, "cpu": True}


def child(cfg_path: str) -> None:
    """Train from the config; print this process's peak RSS in MiB (Linux ru_maxrss is KiB)."""
    from medvlsam2.training.config import load_train_config
    from medvlsam2.training.loop import train

    summary = train(load_train_config(cfg_path), progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mib": round(peak, 1), "steps": summary["steps"], "seconds": summary["seconds"]}))


def peak_rss(data: Path, work: Path, steps: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    (work / "c.json").write_text(json.dumps(config(data, work, steps)))
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "MedVLSAM2Slicer")}
    done = subprocess.run([sys.executable, __file__, "--child", str(work / "c.json")], env=env, capture_output=True,
                          text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def throughput(data: Path, work: Path, steps: int, workers: int) -> dict:
    from medvlsam2.config import tiny
    from medvlsam2.training.config import TrainConfig
    from medvlsam2.training.sources import open_sources
    from medvlsam2.training.stream import StepData, step_loader

    cfg = TrainConfig.from_dict(config(data, work, steps, workers))
    out = {}
    for phase in ("cold", "warm"):
        stream = StepData(open_sources(cfg.datasets), cfg, tiny())
        tic = time.time()
        cases = sum(len(pool) for pool, _ in step_loader(stream, range(steps), workers))
        out[phase] = {"cases": cases, "seconds": round(time.time() - tic, 2), "cases_per_s": round(cases / (time.time() - tic), 2)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=10)
    p.add_argument("--large", type=int, default=200)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--shape", type=int, nargs=3, default=[16, 64, 64])
    p.add_argument("--out", default="train_data.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        small, large = write(root / "small", args.small, tuple(args.shape)), write(root / "large", args.large, tuple(args.shape))
        rss = {f"{n}_cases": peak_rss(d, root / f"run_{n}", args.steps) for n, d in ((args.small, small), (args.large, large))}
        a, b = (v["peak_rss_mib"] for v in rss.values())
        loading = {f"workers_{w}": throughput(large, root / f"load_{w}", 3 * args.steps, w) for w in (0, 2)}
    result = {"peak_rss": rss, "rss_ratio_large_over_small": round(b / a, 3), "loading": loading,
              "shape": args.shape, "steps": args.steps, "load_average": os.getloadavg(), "cpus": os.cpu_count(),
              "machine": platform.machine()}
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
