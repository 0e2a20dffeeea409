"""What several sub-commands share: choosing the model and saying plainly when its weights are random."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import PRECISIONS

RANDOM_WARNING = "weights are random: masks and text are meaningless"
TRAINED_NOTE = "trained on synthetic phantoms; not for clinical images"
PRECISION_HELP = ("inference precision: auto (bf16 on CUDA, fp32 on CPU and MPS), fp32, bf16 (GPUs, and CPUs with "
                  "native bf16), fp16 (CUDA)")


def demo_weights_folder() -> Path:
    """The project's own demo bundle (Resources/DemoWeights in the repository or the installed module)."""
    from ..resources import resource_path

    return resource_path("DemoWeights")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="bundle or Med3DVLM folder, SAM2.1/MedSAM2 .pt/.safetensors file, recipe .yaml, "
                                   "installed weights name (medsam2-latest...), named config tiny|base|paper|small "
                                   "(random weights) or demo; default: demo, the project's demo weights")
    p.add_argument("--image-size", type=int, default=None,
                   help="SAM2 input size in px (default: the model's native size, MedSAM2 512, SAM2.1 1024)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cuda, mps or cpu")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--cache-mb", type=float, default=None, help="feature-cache budget in MB (lower it on small GPUs)")


def load_model_for(args: argparse.Namespace):
    """Load ``args.model`` (default: the demo bundle) through the factory, say what it is on stderr, and
    return (model, trained) where ``trained`` is False for random weights."""
    from ..factory import load_model
    from ..utils.device import resolve_device

    spec = args.model or str(demo_weights_folder())
    model = load_model(spec, str(resolve_device(args.device)), image_size=getattr(args, "image_size", None),
                       precision=args.precision)
    print(model_line(model, spec), file=sys.stderr)
    return model, model.provenance != "random"


def model_line(model, spec: str) -> str:
    """One line saying what is loaded, how trustworthy its weights are and what it can do."""
    caps = ", ".join(sorted(model.capabilities))
    if model.provenance == "random":
        return f"WARNING: {RANDOM_WARNING} (model '{spec}'; can do: {caps})"
    if model.provenance == "phantom-trained":
        return f"model: {model.description} ({TRAINED_NOTE}; can do: {caps})"
    return f"model: {model.description} ({model.provenance} weights; can do: {caps})"


def warn_if_unfamiliar(model, volume) -> bool:
    """Print the domain warning (``medvlsam2.domain``) once on stderr; True when one was printed."""
    from ..domain import domain_warning

    text = domain_warning(model, volume)
    if text:
        print(f"WARNING: {text}", file=sys.stderr)
    return text is not None
