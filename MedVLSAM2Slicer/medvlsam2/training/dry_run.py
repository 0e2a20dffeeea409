"""``medvlsam2 train CONFIG --dry-run``: check a config end to end without training.

Opens every data source (case counts), builds the model with the LLM and the 3D vision encoder on
PyTorch's meta device (shapes only: a 7B LLM needs no memory here) and SAM2 with random weights on the
CPU (its builder cannot run on meta), reads one streamed batch, and prints trainable / frozen
parameters per module and an estimate of the peak memory per rank (the arithmetic is in the output).
Measured peak memory comes from a real run: ``metrics.jsonl`` logs ``peak_memory_gb`` on a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig, get_config
from .config import MODULES, TrainConfig

GB = 1024 ** 3


def _model_config(cfg: TrainConfig) -> ModelConfig:
    if cfg.init_from:
        return ModelConfig.from_dict(json.loads((Path(cfg.init_from) / "config.json").read_text()))
    config = get_config(cfg.model)
    if cfg.lora_r is not None:
        config.llm.lora_r = cfg.lora_r
    if cfg.init.llm:
        config.llm.path = str(cfg.init.llm)
    if cfg.init.vlm and json.loads((Path(cfg.init.vlm) / "config.json").read_text()).get("model_type") == "vlm_qwen":
        config.llm.path = str(cfg.init.vlm)  # Med3DVLM: its Qwen2 LLM and tokenizer
    return config


def meta_model(config: ModelConfig, tokenizer=None):
    """The model with every part but SAM2 on the meta device; a local LLM folder contributes its config.json
    and tokenizer only (no weights are read)."""
    from ..factory import new_model
    from ..modeling.language import load_llm_tokenizer
    from ..modeling.tokenizer import build_tokenizer
    from .loop import qwen_kwargs

    if config.llm.path:
        tokenizer = tokenizer or load_llm_tokenizer(config.llm.path)
        llm = json.loads((Path(config.llm.path) / "config.json").read_text())
        config.llm.builtin, config.llm.path = qwen_kwargs(llm), None
    return new_model(config, tokenizer or build_tokenizer(), meta=True)


def _elements(out) -> int:
    if torch.is_tensor(out):
        return out.numel()
    if isinstance(out, dict):
        out = list(out.values())
    return sum(_elements(o) for o in out) if isinstance(out, (tuple, list)) else 0


def _output_elements(module: nn.Module, run) -> int:
    """Elements of every tensor the submodules of ``module`` output during ``run()`` (saved-activation proxy)."""
    total = [0]

    def hook(_m, _i, out):
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if torch.is_tensor(t):
                total[0] += t.numel()
    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]  # leaves only
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return total[0]


def estimate_memory(model, cfg: TrainConfig, rows: int, cases: int, frames: int, seq: int) -> dict:
    """Peak memory per rank in GiB, with the terms it adds up (bf16 activations, fp32 weights and AdamW states).

    rows: chat rows per step; cases: volumes encoded; frames: SAM2 decodes per step; seq: tokens per row."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    act = 2  # bytes per bf16 activation
    llm_cfg = model.llm.config
    h, inter, layers = llm_cfg.hidden_size, llm_cfg.intermediate_size, llm_cfg.num_hidden_layers
    vocab = model.llm.get_input_embeddings().num_embeddings
    per_layer = rows * seq * (10 * h + 3 * inter) * act  # q,k,v,o, norms, residuals; gate, up, act
    llm = rows * seq * h * act * layers + per_layer if cfg.gradient_checkpointing else per_layer * layers
    logits = rows * seq * vocab * (2 + 4 + 4)  # bf16 logits, the fp32 copy of the loss and its gradient
    size = model.config.vision.input_size
    vis_one = _output_elements(model.vision_encoder, lambda: model.vision_encoder(
        torch.zeros(1, 1, *size, device="meta"))) * act
    blocks = max(1, sum(len(m) for m in model.vision_encoder.children() if isinstance(m, nn.ModuleList)))
    vision = cases * (vis_one / blocks * 2 if cfg.gradient_checkpointing else vis_one)
    if not any(p.requires_grad for p in model.vision_encoder.parameters()):
        vision = 0  # frozen: no graph, its activations are freed as it runs
    s = model.config.segmenter.image_size
    seg = model.segmenter
    features = []
    enc_leaves = _output_elements(seg.image_encoder, lambda: features.append(seg.image_encoder(torch.zeros(1, 3, s, s))))
    # a frozen image encoder keeps only its output features for the decoder; a trained one all activations
    trained = any(p.requires_grad for p in seg.image_encoder.parameters())
    enc_one = (enc_leaves if trained else _elements(features[0])) * act
    hw = (s // 16) ** 2  # memory-attention tokens per frame (stride-16 features, d_model 256, 4 layers)
    mem_one = 4 * hw * 256 * 12 * act + 7 * hw * 64 * act  # layers' activations + the memory bank it reads
    sam2 = frames * (enc_one + mem_one)
    parts = {"weights_fp32": 4 * total, "grads_fp32": 4 * trainable, "adamw_states": 8 * trainable,
             "llm_activations": llm, "llm_logits": logits, "vision_activations": vision, "sam2_activations": sam2}
    gib = {k: round(v / GB, 2) for k, v in parts.items()}
    return {"total_gib": round(sum(parts.values()) / GB, 1), "terms_gib": gib,
            "inputs": {"rows": rows, "tokens_per_row": seq, "volumes": cases, "sam2_frames": frames,
                       "gradient_checkpointing": cfg.gradient_checkpointing,
                       "per_volume_vision_gib": round(vis_one / GB, 2), "per_frame_sam2_gib": round((enc_one + mem_one) / GB, 3),
                       "sam2_image_encoder_trained": trained}}


def dry_run(cfg: TrainConfig) -> dict:
    """Everything ``train`` would check and build, one batch read, parameters counted, memory estimated."""
    from .loop import check_paths, set_trainable
    from .stream import StepData, planned_slices

    sources = check_paths(cfg)
    config = _model_config(cfg)
    tokenizer = None
    if cfg.init_from:
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(cfg.init_from))
    model = meta_model(config, tokenizer)
    set_trainable(model, cfg.trainable)
    data = StepData(sources, cfg, model.config)
    pool, plan = data[0]
    params = {}
    for name in MODULES:
        ps = list(getattr(model, name).parameters())
        params[name] = {"trainable": sum(p.numel() for p in ps if p.requires_grad),
                        "frozen": sum(p.numel() for p in ps if not p.requires_grad)}
    rows = len(plan.text) + len(plan.seg)
    frames = sum(len(s) for s in planned_slices(plan).values()) if cfg.stage == 2 else 0
    # planned frames are de-duplicated per case; the decodes repeat slices across clips and probes
    decodes = sum(len(c.slices) for c in plan.seg + plan.interactive) + sum(len(s) for _, _, s in plan.probes)
    budget_rows = cfg.text_cases + (cfg.seg_clips if cfg.stage == 2 else 0)
    budget_frames = (cfg.seg_clips * (cfg.clip_len + cfg.probes) + cfg.interactive_clips * cfg.clip_len * 2
                     if cfg.stage == 2 else 0)
    seq = model.num_image_tokens + 256  # visual tokens + a long report answer
    estimate = estimate_memory(model, cfg, budget_rows, min(cfg.cases_per_step, budget_rows), budget_frames, seq)
    return {
        "built": "LLM, vision encoder, projector, bridge on the meta device (shapes only); SAM2 random weights on CPU",
        "stage": cfg.stage,
        "sources": [{"name": s.spec.name, "reader": s.spec.reader, "cases": len(s.cases), "train": len(s.train),
                     "held_out": len(s.held_out), "weight": s.spec.weight, "tasks": list(s.spec.tasks)} for s in sources],
        "parameters": params,
        "parameters_total": {"trainable": sum(v["trainable"] for v in params.values()),
                             "frozen": sum(v["frozen"] for v in params.values())},
        "batch": {"cases": len(pool), "chat_rows": rows, "seg_clips": len(plan.seg), "interactive_clips": len(plan.interactive),
                  "probe_slices": sum(len(s) for _, _, s in plan.probes), "sam2_decodes": decodes,
                  "sam2_frames_built": frames},
        "peak_memory_per_rank_estimate": estimate,
        "peak_memory_measured": "needs a GPU: a real run logs peak_memory_gb in metrics.jsonl"
        if not torch.cuda.is_available() else "run `medvlsam2 train CONFIG --max-steps 2`: metrics.jsonl logs peak_memory_gb",
    }
