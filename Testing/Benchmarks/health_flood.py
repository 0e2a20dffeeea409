"""Health latency while the server is flooded: one long propagation plus N queued clicks (issue 15).

    python Testing/Benchmarks/health_flood.py [--queued 50] [--slices 96] [--out flood.json]

Starts ``medvlsam2 serve`` (tiny config, CPU) with the launcher on 127.0.0.1, opens session A on a
``slices`` x 64 x 64 volume and session B on an 8 x 64 x 64 one, starts a propagation on A, and once
its first slice is done sends ``queued`` clicks at once (half on A, queued behind the propagation on
A's lock, half on B, queued on the model worker) while polling ``GET /v1/health`` every 20 ms.
Prints health latency percentiles (idle and during the flood), the most calls seen waiting, and the
server's RSS (idle, peak). Not a test: the test suite only asserts that health answered.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "MedVLSAM2Slicer"))

import httpx  # noqa: E402

from medvlsam2.client import Client  # noqa: E402
from medvlsam2.io.volume import Volume  # noqa: E402
from medvlsam2.server.launcher import launch_server  # noqa: E402


def phantom(seed: int, shape) -> Volume:
    rng = np.random.default_rng(seed)
    k, j, i = np.mgrid[:shape[0], :shape[1], :shape[2]]
    inside = ((k - shape[0] / 2) / (shape[0] / 2.5)) ** 2 + ((j - 32) / 14) ** 2 + ((i - 32) / 18) ** 2 <= 1
    return Volume((rng.normal(40, 15, shape) + 200 * inside).astype(np.int16))


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def stats(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(np.max(ms))} if ms else {"n": 0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queued", type=int, default=50)
    p.add_argument("--slices", type=int, default=96)
    p.add_argument("--out")
    args = p.parse_args()
    if not 1 <= args.queued <= 200 or not 8 <= args.slices <= 256:
        p.error("bounded benchmark: 1..200 queued calls, 8..256 slices")
    server = launch_server(model="tiny", device="cpu", extra_args=["--seed", "0", "--max-sessions", "64"])
    auth = {"Authorization": f"Bearer {server.token}"}
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], rss(server.pid))

    def poll(out: list[float], waiting: list[int], until: threading.Event) -> None:
        http = httpx.Client(headers=auth, timeout=60)  # one connection, made before the clock starts
        while not until.is_set():
            t0 = time.perf_counter()
            r = http.get(server.url + "/v1/health")
            out.append((time.perf_counter() - t0) * 1000)
            waiting.append(int(r.json().get("waiting_calls", -1)))
            time.sleep(0.02)
        http.close()

    try:
        time.sleep(1.0)
        idle_rss = rss(server.pid)
        threading.Thread(target=sample, daemon=True).start()
        idle_ms: list[float] = []
        done = threading.Event()
        t = threading.Thread(target=poll, args=(idle_ms, [], done))
        t.start()
        time.sleep(1.0)
        done.set()
        t.join()
        c = Client(server.url, server.token, timeout=600)
        a, b = c.open_session(phantom(1, (args.slices, 64, 64))), c.open_session(phantom(2, (8, 64, 64)))
        oa, ob = a.add_object(), b.add_object()
        a.add_points(oa, [[32, 32, args.slices // 2]], [1])
        b.add_points(ob, [[32, 32, 4]], [1])
        started = threading.Event()
        t0 = time.perf_counter()
        prop = threading.Thread(target=lambda: a.propagate(oa, progress=lambda d, n: started.set()))
        prop.start()
        started.wait(600)
        flood_ms: list[float] = []
        waiting: list[int] = []
        done = threading.Event()
        poller = threading.Thread(target=poll, args=(flood_ms, waiting, done))
        poller.start()

        # one shared client: 50 clients would each build an SSL context here, holding this process's GIL
        # for seconds and delaying the poller's clock rather than the server
        clicks = httpx.Client(headers=auth, timeout=600, limits=httpx.Limits(max_connections=args.queued + 10))

        def click(n: int) -> int:
            s, o, k = (a, oa, args.slices // 2) if n % 2 else (b, ob, 4)
            r = clicks.post(f"{server.url}/v1/sessions/{s.sid}/objects/{o}/points",
                            json={"points": [[30 + n % 5, 32, k]], "labels": [1]})
            return r.status_code

        with ThreadPoolExecutor(args.queued) as pool:
            codes = list(pool.map(click, range(args.queued)))
        prop.join()
        clicks.close()
        flood_s = time.perf_counter() - t0
        done.set()
        poller.join()
        stop.set()
        result = {"load": os.getloadavg(), "queued": args.queued, "slices": args.slices, "flood_s": flood_s,
                  "click_codes": {str(k): codes.count(k) for k in set(codes)},
                  "health_idle": stats(idle_ms), "health_flood": stats(flood_ms), "max_waiting_calls": max(waiting),
                  "rss_idle_mb": idle_rss / 2**20, "rss_peak_mb": peak[0] / 2**20}
        print(json.dumps(result, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))
        a.close()
        b.close()
        c.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
