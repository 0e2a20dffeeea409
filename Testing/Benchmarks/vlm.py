"""Language timing: time to first token and tokens per second for ask and report (prints, writes JSON).

    python Testing/Benchmarks/vlm.py [--model Resources/DemoWeights | tiny | base] [--repeats 3] [--out r.json]

Runs on a synthetic phantom. The visual tokens are computed once per session (as in the product)
and timed separately. Not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def timed_stream(stream) -> tuple[float, int, float]:
    """(seconds to the first piece, number of pieces, total seconds) of a text stream."""
    start = time.perf_counter()
    first, count = None, 0
    for _ in stream:
        count += 1
        first = first if first is not None else time.perf_counter() - start
    return first or 0.0, count, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Resources/DemoWeights")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()

    from medvlsam2.factory import load_model
    from medvlsam2.data.synthetic import generate_case
    from medvlsam2.session import Session

    torch.manual_seed(0)
    case = generate_case(100000)
    session = Session(load_model(args.model), case.volume)
    start = time.perf_counter()
    session.visual_tokens()
    encode_s = time.perf_counter() - start
    result = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                         f"torch {torch.__version__}", "model": args.model, "encode_volume_s": round(encode_s, 3)}
    question = case.vqa_closed[0].prompt()
    for name, make in (("ask", lambda: session.ask(question)), ("report", session.report)):
        runs = [timed_stream(make()) for _ in range(args.repeats)]
        ttft = statistics.median(r[0] for r in runs)
        tokens = statistics.median(r[1] for r in runs)
        total = statistics.median(r[2] for r in runs)
        result[name] = {"time_to_first_token_s": round(ttft, 4), "tokens": tokens,
                        "tokens_per_s": round((tokens - 1) / max(total - ttft, 1e-9), 1), "total_s": round(total, 3)}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
