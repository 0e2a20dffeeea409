"""Our DCFormer + mixer projector vs Med3DVLM's own code (github mirthAI/Med3DVLM), outside the test suite.

    git clone https://github.com/mirthAI/Med3DVLM /tmp/m3d/repo        # its code is not a dependency
    python Testing/Benchmarks/med3dvlm_upstream.py --repo /tmp/m3d/repo compare [--out r.json]
    python Testing/Benchmarks/med3dvlm_upstream.py --repo /tmp/m3d/repo fixture   # rewrites the test fixture

Both modes build its modules through its own builders (``src/model/encoder/builder.py`` VisionTower,
``src/model/projector/builder.py`` build_mm_projector) with the released model's settings (Qwen2.5-7B width
3584, dcformer, mixer, vision_select_layer -2, low/high output sizes [192, 128] / [64, 128]).
``fixture`` writes the names ("model." + its module path, as in the merged checkpoint) and shapes of every
vision-tower and projector tensor to Testing/Python/fixtures. ``compare`` gives both implementations the
same random weights (every tensor, BatchNorm statistics and layer scales included), runs the same
[1, 1, 128, 256, 256] input in eval mode, and prints the maximum absolute difference of the low/high
features and of the 256 visual tokens.

Its ``vlm_arch.py`` uses an f-string that Python 3.11 cannot parse (nested quotes, a 3.12 feature), so the
language-model wrapper is not imported; only the two builders above and the modules they use.
Its ``dcformer.py`` imports ``timm.layers`` (DropPath, to_3tuple, trunc_normal_), and timm needs
torchvision, which the venv does not have: a three-name stand-in is put on the path. None of the three is
on decomp_small's forward path (DropPath only when drop_path > 0, which is hard-coded 0.0; to_3tuple only
in the non-decomposed ConvPosEnc of transformer blocks, unused by its "C" blocks; trunc_normal_ unused).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedVLSAM2Slicer"))
FIXTURE = ROOT / "Testing" / "Python" / "fixtures" / "med3dvlm_7b_vision_projector.json"
LLM_WIDTH = 3584  # Qwen2.5-7B hidden size
TIMM_STANDIN = '''import torch.nn as nn
def to_3tuple(x): return x if isinstance(x, tuple) else (x, x, x)
def trunc_normal_(t, std=0.02): return nn.init.trunc_normal_(t, std=std)
class DropPath(nn.Module):
    def __init__(self, p=0.0):
        super().__init__(); assert p == 0.0
    def forward(self, x): return x
'''


def released_settings() -> SimpleNamespace:
    """The config fields its builders read, at the released model's values (train_vlm.py defaults and
    finetune_lora.sh; vlm_arch.initialize_vision_modules sets low/high_input_size for the mixer)."""
    return SimpleNamespace(vision_tower="dcformer", input_size=(256, 256, 128), dim=768, depth=12,
                           vision_select_layer=-2, vision_select_feature="cls_patch", mm_projector_type="mixer",
                           mm_mlp_depth=2, proj_out_num=256, low_input_size=(256, 384), high_input_size=(32, 768),
                           low_output_size=[192, 128], high_output_size=[64, 128], hidden_size=LLM_WIDTH)


def upstream_modules(repo: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    shim = Path(tempfile.mkdtemp()) / "timm"
    shim.mkdir()
    (shim / "__init__.py").write_text("")
    (shim / "layers.py").write_text(TIMM_STANDIN)
    sys.path[:0] = [str(shim.parent), str(repo)]
    from src.model.encoder.builder import build_vision_tower
    from src.model.projector.builder import build_mm_projector

    settings = released_settings()
    return build_vision_tower(settings), build_mm_projector(settings)


def ours() -> tuple[torch.nn.Module, torch.nn.Module]:
    from medvlsam2.config import paper
    from medvlsam2.modeling.projector import build_projector
    from medvlsam2.modeling.vision_encoder import build_vision_encoder

    cfg = paper()
    encoder = build_vision_encoder(cfg.vision)
    return encoder, build_projector(cfg.projector, encoder.output_shapes, LLM_WIDTH)


def published_state(tower, projector) -> dict[str, torch.Tensor]:
    """Keys as in the merged checkpoint: VLMQwenForCausalLM.model.{vision_tower,mm_projector}."""
    return {**{f"model.vision_tower.{k}": v for k, v in tower.state_dict().items()},
            **{f"model.mm_projector.{k}": v for k, v in projector.state_dict().items()}}


def write_fixture(repo: Path) -> None:
    with torch.device("meta"):
        tower, projector = upstream_modules(repo)
    tensors = {k: list(v.shape) for k, v in published_state(tower, projector).items()}
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps({"source": "github mirthAI/Med3DVLM @ its builders, released settings; "
                                             "written by Testing/Benchmarks/med3dvlm_upstream.py fixture",
                                   "llm_hidden_size": LLM_WIDTH, "tensors": tensors}, indent=1) + "\n")
    print(f"wrote {len(tensors)} tensors to {FIXTURE}")


def compare(repo: Path, seed: int) -> dict:
    from medvlsam2.modeling.med3dvlm import PUBLISHED_PREFIXES, load_strict

    torch.manual_seed(seed)
    tower, their_projector = upstream_modules(repo)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in published_state(tower, their_projector).items():
            if value.dtype.is_floating_point:  # same random draw for every tensor, statistics included
                value.copy_(torch.rand(value.shape, generator=g) + 0.5 if key.endswith("running_var")
                            else torch.randn(value.shape, generator=g) * 0.05)
    state = published_state(tower, their_projector)
    encoder, projector = ours()
    for part, module in (("vision_encoder", encoder), ("projector", projector)):
        prefix = PUBLISHED_PREFIXES[part]
        load_strict(module, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, prefix, "upstream")
    for m in (tower, their_projector, encoder, projector):
        m.eval()
    images = torch.rand(1, 1, 128, 256, 256, generator=g)
    with torch.inference_mode():
        start = time.perf_counter()
        their_feats = tower(images)
        their_tokens = their_projector(their_feats)
        their_s = time.perf_counter() - start
        start = time.perf_counter()
        our_feats = encoder(images)
        our_tokens = projector(our_feats)
        our_s = time.perf_counter() - start
    diff = lambda a, b: float((a - b).abs().max())  # noqa: E731
    result = {"seed": seed, "input": list(images.shape), "tokens_shape": list(our_tokens.shape),
              "max_abs_diff_low": diff(their_feats[0], our_feats[0]), "max_abs_diff_high": diff(their_feats[1], our_feats[1]),
              "max_abs_diff_tokens": diff(their_tokens, our_tokens), "max_abs_tokens": float(their_tokens.abs().max()),
              "max_abs_low": float(their_feats[0].abs().max()), "max_abs_high": float(their_feats[1].abs().max()),
              "upstream_s": round(their_s, 2), "ours_s": round(our_s, 2), "torch": torch.__version__,
              "python": platform.python_version()}
    print(json.dumps(result, indent=1))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, required=True, help="a checkout of github mirthAI/Med3DVLM")
    p.add_argument("mode", choices=["compare", "fixture"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.mode == "fixture":
        write_fixture(args.repo)
        return
    result = compare(args.repo, args.seed)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
