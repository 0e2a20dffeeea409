"""``medvlsam2 info``: named model configs, parameter counts, device and library versions."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show model configs, parameter counts and the compute device")
    p.add_argument("--model", default=None, help="also build this config or bundle and count its parameters")
    p.set_defaults(func=run)


def describe_device() -> str:
    import torch

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        return f"cuda: {torch.cuda.get_device_name(0)} ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free)"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps (Apple Silicon)"
    return f"cpu ({torch.get_num_threads()} threads; running on CPU is slow, a CUDA GPU is recommended)"


def run(args: argparse.Namespace) -> int:
    import importlib.metadata as md

    from ..config import NAMED_CONFIGS

    print("versions: " + ", ".join(f"{p} {md.version(p)}" for p in ("torch", "sam2", "transformers", "monai")))
    print(f"device:   {describe_device()}")
    for name, make in NAMED_CONFIGS.items():
        c = make()
        llm = c.llm.path or f"built-in Qwen2 (hidden {c.llm.builtin['hidden_size']}, {c.llm.builtin['num_hidden_layers']} layers)"
        v = c.vision
        shape = (f"stages {'/'.join(map(str, v.channels))} wide, {'/'.join(map(str, v.blocks))} blocks" if v.kind == "dcformer"
                 else f"patch {'x'.join(map(str, v.patch_size))}, width {v.hidden_size}, {v.num_layers} layers")
        print(f"\n[{name}]\n  vision:    {v.kind} on {'x'.join(map(str, v.input_size))}, {shape}\n"
              f"  projector: {c.projector.kind} -> {c.projector.num_tokens} visual tokens\n"
              f"  llm:       {llm}{f', LoRA r{c.llm.lora_r}/a{c.llm.lora_alpha}' if c.llm.lora_r else ''}\n"
              f"  segmenter: {c.segmenter.sam2_config} at {c.segmenter.image_size} px"
              f"{' (shrunk Hiera for tests)' if c.segmenter.hydra_overrides else ''}")
    if args.model:
        from ..factory import load_model

        model = load_model(args.model)
        print(f"\n{model.description}: {model.provenance} weights, can do {', '.join(sorted(model.capabilities))}")
        print(f"parameters of {args.model}:")
        for part in ("vision_encoder", "projector", "llm", "bridge", "segmenter"):
            if hasattr(model, part):
                print(f"  {part:15} {sum(p.numel() for p in getattr(model, part).parameters()) / 1e6:8.2f} M")
    return 0
