"""``medvlsam2 train CONFIG [--resume] [--max-steps N] [--dry-run]``: run one training stage from a YAML/JSON config.

Multi-GPU / multi-node: ``accelerate launch -m medvlsam2 train CONFIG`` with an accelerate config file
(DDP or FSDP), or ``torchrun ... -m medvlsam2 train CONFIG``; see the README's training section.
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a stage (1: align, 2: joint) on the datasets a config file lists")
    p.add_argument("config", help="training config (.yaml or .json), e.g. configs/train/demo_stage2.yaml")
    p.add_argument("--resume", action="store_true", help="continue bit-exactly from the newest checkpoint")
    p.add_argument("--max-steps", type=int, help="stop after this step (the LR schedule keeps the config's length)")
    p.add_argument("--output-dir", help="override the config's output_dir")
    p.add_argument("--init-from", help="override the config's init_from (bundle folder)")
    p.add_argument("--export", metavar="FOLDER", help="after training, write the final model as a bundle here")
    p.add_argument("--fp32", action="store_true", help="with --export: keep fp32 weights (default fp16)")
    p.add_argument("--dry-run", action="store_true", help="check the config: open the data sources, build the model "
                   "(meta device), read one batch, print parameters and the estimated peak memory per rank")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.config import load_train_config
    from ..training.loop import export_bundle, train

    cfg = load_train_config(args.config, output_dir=args.output_dir, init_from=args.init_from)
    if args.dry_run:
        from ..training.dry_run import dry_run

        print(json.dumps(dry_run(cfg), indent=2))
        return 0
    summary = train(cfg, resume=args.resume, max_steps=args.max_steps)
    if args.export and summary["final"]:
        summary["exported"] = str(export_bundle(summary["final"], args.export, half=not args.fp32))
    print(json.dumps(summary, indent=2))
    return 0
