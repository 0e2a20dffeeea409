"""What the torch-free client itself holds, and how soon it notices a frozen server. Not a test.

    nice -n 10 python Testing/Benchmarks/client_memory.py [--shape 300 512 512] [--objects 5] [--clicks 200]
        [--engine PATH/MedVLSAM2Slicer] [--out client_memory.json]

Starts ``medvlsam2 serve`` (tiny random model, CPU, seed 0) from the engine tree ``--engine`` (default: this
checkout; pass another checkout's MedVLSAM2Slicer folder to measure that client), then in this process:

1. memory: a phantom CT of ``--shape`` (int16) and the caller's own label map (uint8, the panel's labelmap) are
   made first; then the client opens a session, adds ``--objects`` objects and sends ``--clicks`` clicks spread
   over them (a few slices each), writing every result's patch into the caller's label map. It reports this
   process's resident memory (RSS, /proc/self/statm) before the session opened and after the last click, and the
   bytes allocated meanwhile and still held (tracemalloc; a zeroed mask counts in full here, in RSS only once its
   pages are written);
2. frozen server: on a second, smaller session a propagation starts with the client's default
   ``stream_silence_s``; at its first progress line the server gets SIGSTOP, and the time until the client raises
   ``ServerUnavailable`` is reported (then SIGCONT).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[2] / "MedVLSAM2Slicer"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def phantom(shape: tuple[int, int, int], seed: int = 0):
    from medvlsam2.io.volume import Volume

    rng = np.random.default_rng(seed)
    arr = rng.normal(40, 15, shape).astype(np.int16)
    k, j, i = np.ogrid[:shape[0], :shape[1], :shape[2]]
    c = np.array(shape) / 2
    arr[((k - c[0]) / (shape[0] / 2.5)) ** 2 + ((j - c[1]) / (shape[1] / 4)) ** 2
        + ((i - c[2]) / (shape[2] / 3)) ** 2 <= 1] += 200
    return Volume(arr, (0.8, 0.8, 2.5))


def open_session(client, volume, labels: np.ndarray, label_of: dict[int, int]):
    """A session whose results land in ``labels``; works with clients before and after ``on_result``."""
    def write(r) -> None:
        if r.bbox is not None:
            k0, k1, j0, j1, i0, i1 = r.bbox
            view = labels[k0:k1, j0:j1, i0:i1]
            value = label_of.setdefault(r.object_id, len(label_of) + 1)
            view[(view == value) & (r.patch == 0)] = 0
            view[r.patch > 0] = value

    try:
        return client.open_session(volume, on_result=write), None
    except TypeError:  # a client without on_result: the caller writes each returned result itself
        return client.open_session(volume), write


def memory(client, shape, objects: int, clicks: int) -> dict:
    volume = phantom(shape)
    labels = np.zeros(shape, np.uint8)  # the caller's label map, allocated before the session like Slicer's
    labels[:] = 0  # touch every page so it counts in the "before" RSS
    label_of: dict[int, int] = {}
    tracemalloc.start()  # numpy reports its buffers to it: what the client allocated, touched or not
    traced = tracemalloc.get_traced_memory()[0]
    before = rss_bytes()
    t0 = time.perf_counter()
    session, write = open_session(client, volume, labels, label_of)
    after_open = rss_bytes()
    ids = [session.add_object(f"object {n + 1}") for n in range(objects)]
    kk, jj, ii = shape
    rng = np.random.default_rng(1)
    for n in range(clicks):
        obj = ids[n % objects]
        k = int(kk // 2 + 3 * (n % objects) + (n // objects) % 3)  # three slices per object
        point = [float(ii // 2 + rng.integers(-20, 21)), float(jj // 2 + rng.integers(-20, 21)), float(k)]
        r = session.add_points(obj, [point], [1 if n % 4 else -1])
        if write is not None:
            write(r)
    after = rss_bytes()
    held = tracemalloc.get_traced_memory()[0] - traced
    tracemalloc.stop()
    seconds = time.perf_counter() - t0
    session.close()
    return {"allocated_mb": held / 2**20, "rss_before_mb": before / 2**20, "rss_after_open_mb": after_open / 2**20, "rss_after_mb": after / 2**20,
            "growth_mb": (after - before) / 2**20, "labelled_voxels": int((labels > 0).sum()), "seconds": seconds,
            "volume_mb": volume.array.nbytes / 2**20}


def frozen(client, server_pid: int, shape) -> dict:
    from medvlsam2.protocol import ServerUnavailable

    session, _ = open_session(client, phantom(shape, seed=2), np.zeros(shape, np.uint8), {})
    obj = session.add_object()
    session.add_points(obj, [[shape[2] / 2, shape[1] / 2, shape[0] // 2]], [1])
    stopped: list[float] = []

    def freeze(done: int, total: int) -> None:
        if not stopped:
            os.kill(server_pid, signal.SIGSTOP)
            stopped.append(time.monotonic())

    try:
        session.propagate(obj, progress=freeze)
        detected, message = None, "the propagation finished before the server was stopped"
    except ServerUnavailable as exc:
        detected, message = time.monotonic() - stopped[0], str(exc)
    finally:
        os.kill(server_pid, signal.SIGCONT)
    session.close()
    return {"detect_s": detected, "stream_silence_s": client.stream_silence_s, "message": message[:160]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512], metavar=("K", "J", "I"))
    p.add_argument("--objects", type=int, default=5)
    p.add_argument("--clicks", type=int, default=200)
    p.add_argument("--frozen-shape", type=int, nargs=3, default=[64, 64, 64], metavar=("K", "J", "I"))
    p.add_argument("--engine", type=Path, default=HERE, help="the MedVLSAM2Slicer folder whose client and server run")
    p.add_argument("--out", type=Path, default=Path("client_memory.json"))
    args = p.parse_args()
    if not (1 <= args.objects <= 50 and 1 <= args.clicks <= 2000 and all(0 < s <= 1024 for s in args.shape)):
        p.error("at most 50 objects, 2000 clicks and 1024 voxels per side")
    sys.path.insert(0, str(args.engine.resolve()))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from medvlsam2.client import Client
    from medvlsam2.server.launcher import launch_server

    server = launch_server(model="tiny", device="cpu", extra_args=["--seed", "0", "--max-upload-mb", "1024"],
                           ready_timeout=300)
    client = Client(server.url, server.token, timeout=600)
    try:
        out = {"engine": str(args.engine.resolve()), "shape": args.shape, "objects": args.objects,
               "clicks": args.clicks, "python": platform.python_version(), "load": os.getloadavg(),
               "memory": memory(client, tuple(args.shape), args.objects, args.clicks),
               "frozen": frozen(client, server.pid, tuple(args.frozen_shape))}
    finally:
        client.close()
        server.stop()
    m, f = out["memory"], out["frozen"]
    print(f"client RSS {m['rss_before_mb']:.0f} MB before the session, {m['rss_after_mb']:.0f} MB after "
          f"{args.objects} objects and {args.clicks} clicks on {'x'.join(map(str, args.shape))}: growth "
          f"{m['growth_mb']:.1f} MB; still allocated {m['allocated_mb']:.1f} MB ({m['seconds']:.0f} s)")
    print(f"frozen server detected after {f['detect_s'] if f['detect_s'] is None else round(f['detect_s'], 1)} s "
          f"(stream_silence_s {f['stream_silence_s']:g})")
    args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
