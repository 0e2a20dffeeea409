"""Run by ``test_training_data.py`` under ``torchrun --nproc_per_node 2`` (gloo): FSDP2 checkpoint round trip.

Shards the tiny model with ``fully_shard`` (the LLM's decoder layers, then the whole training module), trains
two stage-1 steps, saves with ``training.loop.save_checkpoint``, loads into a differently initialised sharded
model with ``load_checkpoint`` and writes what it compared to ``OUT/result.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from medvlsam2.checkpoint import load_bundle
from medvlsam2.config import tiny
from medvlsam2.data.synthetic import generate_case
from medvlsam2.modeling.medvlsam2 import MedVLSAM2
from medvlsam2.training.batches import plan_step, prepare_case
from medvlsam2.training.config import TrainConfig
from medvlsam2.training.loop import TrainStep, load_checkpoint, param_groups, save_checkpoint, set_trainable

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def build(cfg: TrainConfig, seed: int):
    torch.manual_seed(seed)
    model = MedVLSAM2.from_config(tiny())
    set_trainable(model, ["vision_encoder", "projector", "llm", "bridge"])
    step = TrainStep(model, cfg)
    for layer in model.llm.model.layers:
        fully_shard(layer)
    fully_shard(step)
    return model, step, torch.optim.AdamW(param_groups(model, cfg), lr=1e-2)


def main(out: Path) -> None:
    accelerator = Accelerator(cpu=True)  # under torchrun: the gloo process group of both ranks
    cfg = TrainConfig.from_dict({"stage": 1, "model": "tiny", "datasets": [{"reader": "synthetic", "seeds": [0, 2]}],
                                 "output_dir": str(out / "run"), "cpu": True})
    model, step, opt = build(cfg, 0)
    pool = [prepare_case(generate_case(s, shape=(8, 64, 64), spacing=(5.6, 5.6, 20.0)), tiny(), {}) for s in range(2)]
    plan = plan_step(0, 0, pool, 1, 2, 0, 0, 2, 0)
    for _ in range(2):
        step(pool, plan)["loss"].backward()
        opt.step()
        opt.zero_grad()
    sharded = isinstance(next(model.llm.parameters()), DTensor)
    ckpt = save_checkpoint(accelerator, step, model, opt, cfg, 2, {"note": "fsdp round trip"})
    full, optim = get_model_state_dict(step, options=FULL), get_optimizer_state_dict(step, opt, options=FULL)
    model2, step2, opt2 = build(cfg, 1)
    at = load_checkpoint(ckpt, step2, opt2)
    full2, optim2 = get_model_state_dict(step2, options=FULL), get_optimizer_state_dict(step2, opt2, options=FULL)
    rank = dist.get_rank()
    shards = [None, None]
    dist.all_gather_object(shards, any((ckpt / "state").glob(f"__{rank}_*.distcp")))
    if accelerator.is_main_process:
        bundle = load_bundle(ckpt).state_dict()
        same = lambda a, b: a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731
        states = [(v, optim2["state"][k]) for k, v in optim["state"].items()]
        result = {"sharded": sharded, "step": at, "shards_per_rank": shards,
                  "bundle_matches_full_state": same({k[len("model."):]: v for k, v in full.items()}, bundle),
                  "resumed_equal": same(full, full2),
                  "optimizer_equal": bool(states) and all(same(a, b) for a, b in states)}
        (out / "result.json").write_text(json.dumps(result))
    dist.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
