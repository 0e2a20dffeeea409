"""What several sub-commands share: choosing the model and saying plainly when its weights are random."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

RANDOM_WARNING = "weights are random: masks and text are meaningless"
TRAINED_NOTE = "trained on synthetic phantoms; not for clinical images"


def demo_weights_folder() -> Path:
    """The project's own demo bundle (Resources/DemoWeights in the repository or the installed module)."""
    from ..resources import resource_path

    return resource_path("DemoWeights")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="bundle folder or named config tiny|base|paper (default: the project's demo weights)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cuda, mps or cpu")
    p.add_argument("--cache-mb", type=float, default=None, help="feature-cache budget in MB (lower it on small GPUs)")


def load_model_for(args: argparse.Namespace):
    """Load ``args.model`` (default: the demo bundle, else the random tiny config), say what it is, and
    return (model, trained) where ``trained`` is False for randomly initialised named configs."""
    from ..checkpoint import load_model
    from ..utils.device import resolve_device

    spec = args.model or str(demo_weights_folder())
    trained = Path(spec).is_dir()
    if not trained:
        spec = args.model or "tiny"
        print(f"WARNING: {RANDOM_WARNING} (model '{spec}')", file=sys.stderr)
    elif Path(spec).resolve() == demo_weights_folder().resolve():
        print(f"model: demo weights ({TRAINED_NOTE})", file=sys.stderr)
    return load_model(spec, str(resolve_device(args.device))), trained
