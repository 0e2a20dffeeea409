"""The training loop: accelerate (devices, mixed precision, DDP/FSDP/DeepSpeed via ``accelerate launch``),
streaming data (``training.stream``), bit-exact checkpoint/resume, a JSONL metrics log and a tqdm bar.

Resume is bit-exact without saving RNG states: the data order and every random draw of step ``n``
come from generators seeded by (seed, n), so a checkpoint only needs weights, optimizer and step.
A checkpoint folder ``checkpoints/step_N`` is a loadable bundle (``checkpoint.save_bundle``, written by
rank 0 from the gathered full state dict) plus ``state/`` (model and optimizer through
``torch.distributed.checkpoint``: every rank writes its own shards under FSDP) and ``state.json``.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import time
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from ..checkpoint import load_bundle, save_bundle
from ..config import get_config
from ..errors import CheckpointError, InputError
from .batches import CaseTensors
from .config import MODULES, TrainConfig
from .feature_cache import ENCODED_PARTS, TrainFeatureCache
from .sources import HELD_OUT_FILE as HELD_OUT, OpenSource, held_out_record, open_sources
from .stage1 import stage1_losses
from .stage2 import stage2_losses
from .stream import StepData, corpus, step_loader

# one process without a process group: torch.distributed.checkpoint then just writes / reads local files
warnings.filterwarnings("ignore", message="torch.distributed is disabled")
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"


class TrainStep(nn.Module):
    """Wraps the model so that DDP-style wrappers see one ``forward`` per step."""

    def __init__(self, model: nn.Module, cfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg
        # training-only (never in a bundle): the auxiliary patch-label head of ``stage1``, on the visual tokens
        width = model.llm.get_input_embeddings().embedding_dim
        self.patch_head = nn.Linear(width, cfg.patch_labels).to(next(model.parameters()).device) \
            if cfg.patch_labels else None

    def forward(self, pool: Sequence[CaseTensors], plan) -> dict[str, torch.Tensor]:
        device = next(self.model.parameters()).device
        if self.cfg.stage == 1:
            return stage1_losses(self.model, pool, plan, device, self.patch_head, self.cfg.patch_label_weight)
        return stage2_losses(self.model, pool, plan, device, self.cfg.lm_weight, self.cfg.seg_weight,
                             self.cfg.thin_end_weight, self.cfg.ungated_probes)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``lr * min_lr_ratio`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def check_paths(cfg: TrainConfig) -> list[OpenSource]:
    """Every folder and file the config names, checked before anything is built; returns the opened sources."""
    for what, path in [("init_from", cfg.init_from)] * bool(cfg.init_from) + cfg.init.paths():
        if not Path(path).exists():
            raise InputError(f"{what}: {path} does not exist; fix the path in the training config")
    return open_sources(cfg.datasets)


def qwen_kwargs(config: dict) -> dict:
    """A Hugging Face Qwen2 config as ``LLMConfig.builtin`` kwargs (the vocabulary follows our tokenizer)."""
    drop = {"vocab_size", "pad_token_id", "eos_token_id", "bos_token_id", "architectures", "model_type",
            "transformers_version", "torch_dtype", "dtype"}
    return {k: v for k, v in config.items() if k not in drop and not k.startswith(("mm_", "vision_"))}


def build_model(cfg: TrainConfig, corpus: Iterable[str]):
    """The model training starts from: the bundle ``cfg.init_from`` (through the model factory), or a fresh
    ``cfg.model`` started from the released parts in ``cfg.init`` (tokenizer trained on ``corpus`` unless an
    LLM brings its own):
    - ``init.sam2_checkpoint``: an official SAM2.1 / MedSAM2 file; its architecture (hiera t/s/b+/l) replaces
      the config's and its weights load strictly (``modeling.segmenter``, as the factory loads segmenters);
    - ``init.llm``: a local Hugging Face LLM folder;
    - ``init.vlm``: a Med3DVLM folder (its DCFormer, mixer projector and Qwen2 LLM, architectures from its
      config.json) or its DCFormer_SigLIP encoder folder (into the config's DCFormer), loaded by ``modeling.med3dvlm``.
    """
    from ..factory import load_model, new_model
    from ..modeling.segmenter import infer_sam2_config, load_sam2_state_dict, read_state_dict
    from ..modeling.tokenizer import DEFAULT_CORPUS, build_tokenizer

    if cfg.init_from:
        return load_model(cfg.init_from)
    config = get_config(cfg.model)
    if cfg.lora_r is not None:
        config.llm.lora_r = cfg.lora_r
    sam2 = read_state_dict(cfg.init.sam2_checkpoint) if cfg.init.sam2_checkpoint else None
    if sam2 is not None:
        config.segmenter.sam2_config = infer_sam2_config(sam2, Path(cfg.init.sam2_checkpoint).name)
        config.segmenter.hydra_overrides = ()  # the released architecture, unshrunk
    med3dvlm, encoder = None, None
    if cfg.init.vlm:
        from ..modeling.med3dvlm import is_dcformer_encoder_folder, load_dcformer_encoder, load_med3dvlm

        if is_dcformer_encoder_folder(cfg.init.vlm):
            encoder = load_dcformer_encoder(cfg.init.vlm, config.vision)
        else:
            med3dvlm = load_med3dvlm(cfg.init.vlm)
    if med3dvlm is not None:
        from ..modeling.language import load_llm_tokenizer
        from ..modeling.med3dvlm import _projector_config, _read_config, _vision_config

        released = _read_config(Path(cfg.init.vlm))
        config.vision, config.projector = _vision_config(released), _projector_config(released)
        config.llm.path, config.llm.builtin = None, qwen_kwargs(med3dvlm.llm.config.to_dict())
        model = new_model(config, tokenizer=load_llm_tokenizer(cfg.init.vlm))
    elif cfg.init.llm:  # its own tokenizer and weights
        config.llm.path = str(cfg.init.llm)
        model = new_model(config)
    else:
        model = new_model(config, tokenizer=build_tokenizer(list(DEFAULT_CORPUS) + list(corpus)))
    if med3dvlm is not None:
        med3dvlm.llm.resize_token_embeddings(len(model.tokenizer))  # + [SEG] and our image token
        base = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
        _load_part(base, _onto_lora(base, med3dvlm.llm.state_dict()), "init.vlm language model")
        encoder = med3dvlm.vision_encoder
        _load_part(model.projector, med3dvlm.projector.state_dict(), "init.vlm projector")
    if encoder is not None:
        _load_part(model.vision_encoder, encoder.state_dict(), "init.vlm vision encoder")
    if sam2 is not None:
        load_sam2_state_dict(model.segmenter, sam2, Path(cfg.init.sam2_checkpoint).name)
    return model


def _onto_lora(base: nn.Module, state: dict) -> dict:
    """Released (LoRA-merged) LLM keys renamed onto a LoRA-wrapped model: ``x.weight`` -> ``x.base_layer.weight``;
    the new adapters keep their own initialisation (zero B, so the wrapped model starts as the released one)."""
    target = base.state_dict()
    out = {}
    for key, value in state.items():
        head, _, leaf = key.rpartition(".")
        wrapped = f"{head}.base_layer.{leaf}"
        out[wrapped if key not in target and wrapped in target else key] = value
    out.update({k: v for k, v in target.items() if ".lora_" in k and k not in out})
    return out


def _load_part(module: nn.Module, state: dict, what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{what} does not match the model config ({str(exc)[:300]}); use a model config with "
                              "the released part's architecture (e.g. paper for Med3DVLM)") from None


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in the backward pass: the LLM's decoder layers (transformers) and the blocks of
    the 3D vision encoder (the entries of its outermost module lists)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lists = [m for m in model.vision_encoder.modules() if isinstance(m, nn.ModuleList)]
    inner = {id(x) for m in lists for x in m.modules() if x is not m and isinstance(x, nn.ModuleList)}
    blocks = {id(b) for m in lists if id(m) not in inner for b in m}
    if blocks:
        apply_activation_checkpointing(model.vision_encoder, check_fn=lambda m: id(m) in blocks)


def set_trainable(model, trainable: Sequence[str], frozen: Sequence[str] = ()) -> list[nn.Parameter]:
    """Freeze every module (or dotted part of one) not listed, and the parts in ``frozen`` even when listed;
    returns the trainable parameters in a fixed order."""
    params = []
    lora = model.config.llm.lora_r > 0
    for name in MODULES:
        for pname, p in getattr(model, name).named_parameters():
            full = f"{name}.{pname}"
            listed = any(full.startswith(t + ".") for t in trainable) and not any(full.startswith(f + ".")
                                                                                for f in frozen)
            # with LoRA only the adapters of the LLM train; its released weights stay frozen
            p.requires_grad_(listed and not (lora and name == "llm" and "lora_" not in pname))
    for p in model.parameters():
        if p.requires_grad:
            params.append(p)
    if not params:
        raise InputError("nothing to train: 'trainable' selects no parameters")
    return params


def param_groups(model, cfg: TrainConfig, extra: nn.Module | None = None) -> list[dict]:
    """AdamW groups of the trainable parameters: per module (its ``lr_multipliers`` entry) and with or
    without weight decay (none on biases and norms); empty groups are left out. ``extra``: training-only
    modules (the patch-label head), at the base learning rate."""
    groups = []
    for name in (*MODULES, None):
        module = getattr(model, name) if name else extra
        if module is None:
            continue
        trainable = [p for p in module.parameters() if p.requires_grad]
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


def save_checkpoint(accelerator, wrapped: nn.Module, model, optimizer, cfg: TrainConfig, step: int,
                    metadata: dict) -> Path:
    """Write ``checkpoints/step_N`` atomically (temp folder + rename) from every rank; keep the newest
    ``keep_checkpoints``. ``wrapped`` is the prepared (DDP / FSDP) module, ``model`` the MedVLSAM2 inside."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    root = Path(cfg.output_dir) / CHECKPOINTS
    final, tmp = root / f"step_{step:07d}", root / f".tmp_step_{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    msd, osd = get_state_dict(wrapped, optimizer)
    dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(tmp / "state"))
    full = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if accelerator.is_main_process:
        prefix = "model."  # TrainStep's attribute
        save_bundle(model, tmp, metadata, state_dict={k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)})
        (tmp / "state.json").write_text(json.dumps({"step": step, "train_config": cfg.to_dict()}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(root.glob("step_*"))[:-max(1, cfg.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(checkpoint: Path, wrapped: nn.Module, optimizer) -> int:
    """Restore the model and optimizer state written by ``save_checkpoint`` (each rank its shards); returns the step."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(wrapped, optimizer)
    saved = dcp.FileSystemReader(str(checkpoint / "state")).read_metadata().state_dict_metadata
    missing = sorted(f"model.{k}" for k in msd if f"model.{k}" not in saved)
    if missing:
        raise CheckpointError(f"{checkpoint.name}/state lacks {len(missing)} model tensors (e.g. {missing[0]}); "
                              "it was written for another model")
    state = {"model": msd, "optimizer": osd}
    # partial: parameters that never had a gradient (unused branches) have no optimizer state
    dcp.load(state, checkpoint_id=str(checkpoint / "state"), planner=dcp.DefaultLoadPlanner(allow_partial_load=True))
    set_state_dict(wrapped, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    return int(json.loads((checkpoint / "state.json").read_text())["step"])


def _log(path: Path, record: dict) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def _prepare(cfg: TrainConfig, checkpoint: Path | None):
    """(sources, data, model): everything checked and opened before the first step."""
    sources = check_paths(cfg)
    if checkpoint or cfg.init_from:
        from ..factory import load_model

        model = load_model(str(checkpoint or cfg.init_from))
        for section, values in ({} if checkpoint else cfg.model_overrides).items():  # a checkpoint has them already
            if section == "projector" and "num_tokens" in values and model.config.projector.kind != "mlp":
                raise InputError("model_overrides: projector.num_tokens can change only on an 'mlp' projector")
            for key, value in values.items():
                setattr(getattr(model.config, section), key, value)
        return sources, StepData(sources, cfg, model.config), model
    config = get_config(cfg.model)
    data = StepData(sources, cfg, config)
    texts = corpus(data) if not cfg.init.llm else []
    if any(s.spec.reader == "synthetic" for s in sources):
        from ..data.synthetic import corpus as synthetic_corpus

        texts += synthetic_corpus()
    torch.manual_seed(cfg.seed)  # the fresh model's initial weights
    return sources, data, build_model(cfg, texts)


def train(cfg: TrainConfig, resume: bool = False, max_steps: int | None = None, progress: bool = True) -> dict:
    """Run (or resume) one training stage; returns a summary with the final bundle's folder.

    ``max_steps`` stops early (the schedule still spans ``cfg.max_steps``).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from tqdm.auto import tqdm

    cfg.validate()
    out = Path(cfg.output_dir)
    checkpoint = latest_checkpoint(out) if resume else None
    if resume and checkpoint is None:
        raise CheckpointError(f"--resume: no checkpoint under {out / CHECKPOINTS}; start without --resume")
    t0 = time.time()
    sources, data, model = _prepare(cfg, checkpoint)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.cpu,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    out.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        (out / HELD_OUT).write_text(json.dumps(held_out_record(sources), indent=1))
    cache_stats = _feature_cache(cfg, accelerator, data, model, progress) if cfg.feature_cache else None
    data_s = time.time() - t0

    params = set_trainable(model, cfg.trainable, ENCODED_PARTS if cfg.feature_cache else ())
    if any(p.requires_grad for p in model.region.parameters()):
        model.config.region_trained = True  # written with every checkpoint of this run
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    train_step = TrainStep(model, cfg)
    if train_step.patch_head is not None:
        params += list(train_step.patch_head.parameters())
    optimizer = torch.optim.AdamW(param_groups(model, cfg, train_step.patch_head), lr=cfg.lr)
    step_module, optimizer = accelerator.prepare(train_step, optimizer)
    torch_optimizer = getattr(optimizer, "optimizer", optimizer)
    start = load_checkpoint(checkpoint, step_module, torch_optimizer) if checkpoint else 0
    _set_modes(model)

    stop = min(cfg.max_steps, max_steps if max_steps is not None else cfg.max_steps)
    metrics = out / METRICS
    rank, world = accelerator.process_index, accelerator.num_processes
    loader = step_loader(data, [step * world + rank for step in range(start, stop)], cfg.workers)
    bar = tqdm(range(start, stop), initial=start, total=stop, disable=not (progress and accelerator.is_main_process),
               desc=f"stage {cfg.stage}")
    meta = _metadata(cfg, accelerator, sources)
    preempted, restore_signals = _on_termination()
    try:
        step = _run(cfg, accelerator, step_module, optimizer, torch_optimizer, params, model, loader, bar, start, stop,
                    metrics, meta, t0, preempted)
    finally:
        restore_signals()
    final = latest_checkpoint(out)
    return {"final": str(final) if final else None, "steps": step + 1 if stop > start else start, "started_at_step": start,
            "data_seconds": round(data_s, 1), "seconds": round(time.time() - t0, 1), "held_out": str(out / HELD_OUT),
            **({"feature_cache": cache_stats} if cache_stats else {})}


def _feature_cache(cfg: TrainConfig, accelerator, data: StepData, model, progress: bool) -> dict:
    """Open ``cfg.feature_cache`` for this model's encoders, encode the training cases it lacks (main process; the
    others wait) and let ``data`` read from it; returns the cache's counts."""
    model.to(accelerator.device)
    stats: dict = {}
    if accelerator.is_main_process:
        cache = TrainFeatureCache(cfg.feature_cache, model, cfg.feature_cache_dtype)
        stats = cache.build(model, data, progress)
    accelerator.wait_for_everyone()
    data.features = TrainFeatureCache(cfg.feature_cache, model, cfg.feature_cache_dtype)
    if not stats:
        stats = {"cases": len(data.features.entries)}
    return stats


def _run(cfg, accelerator, step_module, optimizer, torch_optimizer, params, model, loader, bar, start: int, stop: int,
         metrics: Path, meta: dict, t0: float, preempted) -> int:
    """The steps from ``start`` to ``stop``; returns the last step index run."""
    rank, world = accelerator.process_index, accelerator.num_processes
    last_ckpt, step_times = time.time(), []
    step = start
    for step, (pool, plan) in zip(bar, loader):
        tic = time.time()
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        torch.manual_seed(cfg.seed * 1_000_003 + step * world + rank)  # clicks, box jitter, dropout
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
            if accelerator.device.type == "cuda":
                record["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(accelerator.device) / 1024 ** 3, 2)
            _log(metrics, record)
            bar.set_postfix(loss=record["loss"])
            step_times = []
        out_of_time = cfg.time_limit_s > 0 and time.time() - t0 > cfg.time_limit_s or preempted.is_set()
        due = done % cfg.checkpoint_every == 0 or time.time() - last_ckpt > cfg.checkpoint_every_s or done == stop
        if accelerator.num_processes > 1:  # every rank must take part: any rank that is due or stopping decides
            flag = torch.tensor([float(due or out_of_time), float(out_of_time)], device=accelerator.device)
            flag = accelerator.reduce(flag, reduction="max")
            due, out_of_time = bool(flag[0]), bool(flag[1])
        if due or out_of_time:
            save_checkpoint(accelerator, step_module, model, torch_optimizer, cfg, done,
                            {**meta, "step": done, "train_seconds": round(time.time() - t0, 1)})
            last_ckpt = time.time()
        if out_of_time:
            break
    return step


def _on_termination():
    """An event set by SIGTERM / SIGUSR1 (a scheduler preempting the job): the loop checkpoints and stops."""
    import signal
    import threading

    event = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            previous[sig] = signal.signal(sig, lambda *_: event.set())

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return event, restore


def _metadata(cfg: TrainConfig, accelerator, sources: Sequence[OpenSource]) -> dict:
    device = str(accelerator.device)
    if accelerator.device.type == "cuda":
        device = torch.cuda.get_device_name(accelerator.device)
    synthetic_only = all(s.spec.reader == "synthetic" for s in sources)
    return {"trained_on": "synthetic phantoms (medvlsam2.data.synthetic); not for clinical images" if synthetic_only
            else "datasets: " + ", ".join(f"{s.spec.name} ({s.spec.reader}, {len(s.train)} cases)" for s in sources)
            + "; research use, not for clinical images",
            "datasets": [{"name": s.spec.name, "reader": s.spec.reader, "train_cases": len(s.train),
                          "held_out": s.held_out} for s in sources],
            "stage": cfg.stage, "seed": cfg.seed, "machine": f"{platform.machine()} {device} x{accelerator.num_processes}",
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
