"""The training loop: accelerate (devices, mixed precision, DDP/FSDP/DeepSpeed via ``accelerate launch``),
bit-exact checkpoint/resume, a JSONL metrics log and a tqdm progress bar.

Resume is bit-exact without saving RNG states: the data order and every random draw of step ``n``
come from generators seeded by (seed, n), so a checkpoint only needs weights, optimizer and step.
A checkpoint folder is a loadable bundle (``checkpoint.save_bundle``) plus ``optimizer.pt`` and
``state.json``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from ..checkpoint import load_bundle, save_bundle
from ..config import get_config
from ..data.case import CTCase
from ..errors import CheckpointError, InputError
from ..modeling.prompting import segment_question
from .batches import CaseTensors, case_texts, case_targets, generate_pool, plan_step, prepare_case
from .config import MODULES, TrainConfig
from .stage1 import stage1_losses
from .stage2 import precompute_features, stage2_losses

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"


class TrainStep(nn.Module):
    """Wraps the model so that DDP-style wrappers see one ``forward`` per step."""

    def __init__(self, model: nn.Module, cfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, pool: Sequence[CaseTensors], plan) -> dict[str, torch.Tensor]:
        device = next(self.model.parameters()).device
        if self.cfg.stage == 1:
            return stage1_losses(self.model, pool, plan, device)
        return stage2_losses(self.model, pool, plan, device, self.cfg.lm_weight, self.cfg.seg_weight,
                             self.cfg.thin_end_weight)


def synthetic_source() -> tuple[Callable[[int], CTCase], dict[str, list[int]], list[str]]:
    """(generate_case, STRUCTURE_LABELS, corpus) from the synthetic phantom generator."""
    try:
        from ..data import synthetic
    except ImportError as exc:
        raise InputError(f"the synthetic phantom generator (medvlsam2.data.synthetic) is not available: {exc}") from None
    return synthetic.generate_case, dict(synthetic.STRUCTURE_LABELS), list(synthetic.corpus())


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``lr * min_lr_ratio`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_model(cfg: TrainConfig, corpus: Iterable[str]):
    """A fresh model for ``cfg.model`` (tokenizer trained on ``corpus``) or the bundle ``cfg.init_from``."""
    from ..modeling.medvlsam2 import MedVLSAM2
    from ..modeling.tokenizer import DEFAULT_CORPUS, build_tokenizer

    if cfg.init_from:
        return load_bundle(cfg.init_from)
    config = get_config(cfg.model)
    if cfg.llm_path or cfg.sam2_checkpoint:  # released parts: their own tokenizer, official SAM2 weights
        from ..checkpoint import init_from_parts

        return init_from_parts(config, cfg.sam2_checkpoint, cfg.llm_path)
    return MedVLSAM2.from_config(config, tokenizer=build_tokenizer(list(DEFAULT_CORPUS) + list(corpus)))


def set_trainable(model, trainable: Sequence[str]) -> list[nn.Parameter]:
    """Freeze every module (or dotted part of one) not listed; returns the trainable parameters in a fixed order."""
    params = []
    lora = model.config.llm.lora_r > 0
    for name in MODULES:
        for pname, p in getattr(model, name).named_parameters():
            full = f"{name}.{pname}"
            listed = any(full.startswith(t + ".") for t in trainable)
            # with LoRA only the adapters of the LLM train; its released weights stay frozen
            p.requires_grad_(listed and not (lora and name == "llm" and "lora_" not in pname))
    for p in model.parameters():
        if p.requires_grad:
            params.append(p)
    if not params:
        raise InputError("nothing to train: 'trainable' selects no parameters")
    return params


def param_groups(model, cfg: TrainConfig) -> list[dict]:
    """AdamW groups of the trainable parameters: per module (its ``lr_multipliers`` entry) and with or
    without weight decay (none on biases and norms); empty groups are left out."""
    groups = []
    for name in MODULES:
        trainable = [p for p in getattr(model, name).parameters() if p.requires_grad]
        scale = float(cfg.lr_multipliers.get(name, 1.0))
        for decay, members in ((cfg.weight_decay, [p for p in trainable if p.dim() > 1]),
                               (0.0, [p for p in trainable if p.dim() <= 1])):
            if members:
                groups.append({"params": members, "weight_decay": decay, "lr_scale": scale})
    return groups


def _set_modes(model) -> None:
    model.train()
    model.segmenter.eval()  # inference code paths (see stage2.py); SAM2 has no batch norm to update


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    root = Path(output_dir) / CHECKPOINTS
    done = sorted(p for p in root.glob("step_*") if (p / "state.json").is_file()) if root.is_dir() else []
    return done[-1] if done else None


def save_checkpoint(model, optimizer, cfg: TrainConfig, step: int, metadata: dict) -> Path:
    """Write ``checkpoints/step_N`` atomically (temp folder + rename); keep the newest ``keep_checkpoints``."""
    root = Path(cfg.output_dir) / CHECKPOINTS
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_bundle(model, tmp, metadata)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "train_config": cfg.to_dict()}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(root.glob("step_*"))[:-max(1, cfg.keep_checkpoints)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _log(path: Path, record: dict) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def train(cfg: TrainConfig, resume: bool = False, max_steps: int | None = None,
          source: tuple[Callable[[int], CTCase], dict[str, list[int]], list[str]] | None = None,
          progress: bool = True) -> dict:
    """Run (or resume) one training stage; returns a summary with the final bundle's folder.

    ``source`` = (generate(seed) -> CTCase, structure labels, extra tokenizer corpus); default: the
    synthetic phantoms. ``max_steps`` stops early (the schedule still spans ``cfg.max_steps``).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from tqdm.auto import tqdm

    cfg.validate()
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.cpu,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    generate, structures, corpus = source or synthetic_source()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    checkpoint = latest_checkpoint(out) if resume else None
    if resume and checkpoint is None:
        raise CheckpointError(f"--resume: no checkpoint under {out / CHECKPOINTS}; start without --resume")

    t0 = time.time()
    seeds = list(range(cfg.train_seeds[0], cfg.train_seeds[0] + cfg.pool_size))
    cases = generate_pool(generate, seeds, workers=min(16, os.cpu_count() or 1) if cfg.pool_size >= 32 else 0)
    corpus = list(corpus) + [t for c in cases for pair in case_texts(c) for t in pair]
    corpus += [segment_question(t.phrase) for c in cases for group in case_targets(c, structures) for t in group]
    torch.manual_seed(cfg.seed)  # the fresh model's initial weights
    model = load_bundle(checkpoint) if checkpoint else build_model(cfg, corpus)
    pool = [prepare_case(c, model.config, structures) for c in cases]
    del cases
    data_s = time.time() - t0

    params = set_trainable(model, cfg.trainable)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr)
    if checkpoint:
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True))
        start = json.loads((checkpoint / "state.json").read_text())["step"]
    step_module = TrainStep(model, cfg)
    step_module, optimizer = accelerator.prepare(step_module, optimizer)
    device = accelerator.device
    pool = [CaseTensors(p.encoder.to(device), p.frames.to(device), p.labels, p.texts, p.present, p.absent, p.z_extent)
            for p in pool]
    if cfg.stage == 2 and not any(p.requires_grad for p in model.segmenter.image_encoder.parameters()):
        # A frozen SAM2 image encoder gives the same features every step: compute them once. The
        # decoder's conv_s0/conv_s1 (applied by forward_image) then get no gradient and stay as they are.
        for case in tqdm(pool, desc="SAM2 features", disable=not (progress and accelerator.is_main_process)):
            case.features = precompute_features(model.segmenter, case.frames)
    _set_modes(model)

    stop = min(cfg.max_steps, max_steps if max_steps is not None else cfg.max_steps)
    metrics = out / METRICS
    rank, world = accelerator.process_index, accelerator.num_processes
    last_ckpt, step_times = time.time(), []
    bar = tqdm(range(start, stop), initial=start, total=stop, disable=not (progress and accelerator.is_main_process),
               desc=f"stage {cfg.stage}")
    meta = _metadata(cfg, accelerator)
    step = start
    for step in bar:
        tic = time.time()
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        torch.manual_seed(cfg.seed * 1_000_003 + step * world + rank)  # clicks, box jitter, dropout
        plan = plan_step(cfg.seed, step * world + rank, pool, cfg.stage, cfg.text_cases, cfg.seg_clips,
                         cfg.interactive_clips, cfg.clip_len, cfg.probes, target_weights=cfg.target_weights,
                         clicks=cfg.click_schedule())
        with accelerator.autocast():
            logs = step_module(pool, plan)
        accelerator.backward(logs["loss"])
        if cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_times.append(time.time() - tic)
        done = step + 1
        if accelerator.is_main_process and (done % cfg.log_every == 0 or done == stop):
            record = {"step": done, "lr": lr, "step_s": round(sum(step_times) / len(step_times), 4),
                      "elapsed_s": round(time.time() - t0, 1), **{k: round(float(v.detach()), 5) for k, v in logs.items()}}
            _log(metrics, record)
            bar.set_postfix(loss=record["loss"])
            step_times = []
        out_of_time = cfg.time_limit_s > 0 and time.time() - t0 > cfg.time_limit_s
        if done % cfg.checkpoint_every == 0 or time.time() - last_ckpt > cfg.checkpoint_every_s or done == stop \
                or out_of_time:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                save_checkpoint(accelerator.unwrap_model(step_module).model, optimizer.optimizer
                                if hasattr(optimizer, "optimizer") else optimizer, cfg, done,
                                {**meta, "step": done, "train_seconds": round(time.time() - t0, 1)})
            last_ckpt = time.time()
        if out_of_time:
            break
    final = latest_checkpoint(out)
    return {"final": str(final) if final else None, "steps": step + 1 if stop > start else start, "started_at_step": start,
            "data_seconds": round(data_s, 1), "seconds": round(time.time() - t0, 1)}


def _metadata(cfg: TrainConfig, accelerator) -> dict:
    device = str(accelerator.device)
    if accelerator.device.type == "cuda":
        device = torch.cuda.get_device_name(accelerator.device)
    return {"trained_on": "synthetic phantoms (medvlsam2.data.synthetic); not for clinical images",
            "stage": cfg.stage, "train_seeds": [cfg.train_seeds[0], cfg.train_seeds[0] + cfg.pool_size],
            "seed": cfg.seed, "machine": f"{platform.machine()} {device} x{accelerator.num_processes}",
            "mixed_precision": cfg.mixed_precision}


def export_bundle(checkpoint: str | Path, folder: str | Path, half: bool = True, metadata: dict | None = None) -> Path:
    """Copy a checkpoint's model into a plain bundle (no optimizer), weights stored fp16 when ``half``.

    Loading casts the weights back to the model's fp32 parameters, so a half bundle runs like any other.
    """
    src = Path(checkpoint)
    model = load_bundle(src)
    meta = json.loads((src / "metadata.json").read_text()) if (src / "metadata.json").is_file() else {}
    meta.update(metadata or {})
    meta["weights_dtype"] = "float16" if half else "float32"
    if half:
        model = model.half()
    return save_bundle(model, folder, meta)
