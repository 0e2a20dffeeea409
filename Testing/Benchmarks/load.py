"""Server load on loopback: request latency percentiles and throughput for N concurrent sessions.

    python Testing/Benchmarks/load.py [--sessions 1 2 4] [--rounds 5] [--model tiny] [--shape 16 64 64] [--out load.json]

Starts ``medvlsam2 serve`` with the launcher on 127.0.0.1 (or uses ``--url`` + ``$MEDVLSAM2_SERVER_TOKEN``,
loopback only), then each of N client threads opens its own session (one upload), adds an object
and repeats ``rounds`` times: a click, a propagation over the volume, a mask-free health call. Bounded:
at most 32 sessions, 50 rounds and ``--max-seconds`` per level. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "MedVLSAM2Slicer"))

from medvlsam2.client import Client  # noqa: E402
from medvlsam2.io.volume import Volume  # noqa: E402
from medvlsam2.server.launcher import launch_server  # noqa: E402


def phantom(seed: int, shape: tuple[int, int, int]) -> Volume:
    rng = np.random.default_rng(seed)
    k, j, i = np.mgrid[:shape[0], :shape[1], :shape[2]]
    c = np.array(shape) / 2
    inside = ((k - c[0]) / (shape[0] / 2.5)) ** 2 + ((j - c[1]) / (shape[1] / 4)) ** 2 + ((i - c[2]) / (shape[2] / 3)) ** 2 <= 1
    return Volume((rng.normal(40, 15, shape) + 200 * inside).astype(np.int16))


def run_level(url: str, token: str, n: int, rounds: int, shape, max_seconds: float) -> dict:
    """N sessions in parallel; returns per-call latencies (ms) and throughput."""
    lat: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds
    barrier = threading.Barrier(n)

    def timed(kind: str, fn):
        t0 = time.perf_counter()
        out = fn()
        with lock:
            lat[kind].append((time.perf_counter() - t0) * 1000)
        return out

    def client_thread(idx: int) -> None:
        try:
            c = Client(url, token, timeout=600)
            vol = phantom(1000 + idx, shape)  # distinct content: every session uploads
            s = timed("open (upload)", lambda: c.open_session(vol))
            o = timed("add_object", lambda: s.add_object())
            barrier.wait(60)
            for r in range(rounds):
                if time.monotonic() > deadline:
                    break
                point = [[shape[2] / 2 + r % 3, shape[1] / 2, shape[0] // 2]]
                timed("click", lambda: s.add_points(o, point, [1]))
                timed("propagate", lambda: s.propagate(o))
                timed("health", c.health)
            s.close()
            c.close()
        except Exception as exc:  # counted, not fatal
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    calls = sum(len(v) for v in lat.values())
    stats = {k: {"n": len(v), "p50_ms": float(np.percentile(v, 50)), "p90_ms": float(np.percentile(v, 90)),
                 "p99_ms": float(np.percentile(v, 99)), "max_ms": float(np.max(v))} for k, v in lat.items() if v}
    return {"sessions": n, "wall_s": wall, "calls": calls, "calls_per_s": calls / wall,
            "propagations_per_s": len(lat["propagate"]) / wall, "latency": stats, "errors": errors}


def markdown(levels: list[dict]) -> str:
    rows = ["| sessions | call | n | p50 ms | p90 ms | p99 ms | max ms |", "|---|---|---|---|---|---|---|"]
    for lv in levels:
        for kind, s in lv["latency"].items():
            rows.append(f"| {lv['sessions']} | {kind} | {s['n']} | {s['p50_ms']:.0f} | {s['p90_ms']:.0f} | "
                        f"{s['p99_ms']:.0f} | {s['max_ms']:.0f} |")
    rows += ["", "| sessions | wall s | calls/s | propagations/s | errors |", "|---|---|---|---|---|"]
    rows += [f"| {lv['sessions']} | {lv['wall_s']:.1f} | {lv['calls_per_s']:.2f} | {lv['propagations_per_s']:.2f} | "
             f"{len(lv['errors'])} |" for lv in levels]
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--model", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--shape", type=int, nargs=3, default=[16, 64, 64], metavar=("K", "J", "I"))
    p.add_argument("--max-seconds", type=float, default=300.0, help="per concurrency level")
    p.add_argument("--url", help="an already running loopback server (token from $MEDVLSAM2_SERVER_TOKEN)")
    p.add_argument("--out", help="write the numbers as JSON here")
    args = p.parse_args()
    if max(args.sessions) > 32 or args.rounds > 50 or min(args.sessions) < 1:
        p.error("bounded benchmark: 1..32 sessions and at most 50 rounds")
    server = None
    if args.url:
        if urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
            p.error("loopback only: this script must not load a remote server")
        url, token = args.url, os.environ.get("MEDVLSAM2_SERVER_TOKEN", "")
    else:
        t0 = time.perf_counter()
        server = launch_server(model=args.model, device=args.device, extra_args=["--max-sessions", "64"])
        url, token = server.url, server.token
        print(f"server ready in {time.perf_counter() - t0:.1f} s", flush=True)
    try:
        levels = []
        for n in args.sessions:
            lv = run_level(url, token, n, args.rounds, tuple(args.shape), args.max_seconds)
            levels.append(lv)
            print(f"{n} session(s): {lv['calls_per_s']:.2f} calls/s, propagate p50 "
                  f"{lv['latency'].get('propagate', {}).get('p50_ms', float('nan')):.0f} ms, errors {len(lv['errors'])}",
                  flush=True)
        result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version(),
                  "model": args.model, "device": args.device, "shape": args.shape, "rounds": args.rounds,
                  "levels": levels}
        print(markdown(levels))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
