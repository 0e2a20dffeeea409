"""Model configurations. Named configs: ``tiny`` (tests), ``base`` and ``paper`` (see README).

A config is plain data (dataclasses <-> JSON) so that it can be stored in a bundle's
``config.json`` and shown by ``medvlsam2 info``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # inference autocast choices (utils.device.autocast_dtype)


@dataclass
class VisionConfig:
    """3D vision encoder. ``kind``: "vit" (MONAI ViT, M3D-LaMed style) or "dcformer" (Med3DVLM's DCFormer).

    The ViT uses ``patch_size``/``hidden_size``/``mlp_dim``/``num_layers``/``num_heads``; the DCFormer uses
    ``channels``/``blocks``/``kernels`` (five stages; the defaults are Med3DVLM's released ``decomp_small``).
    """

    kind: str = "vit"
    input_size: tuple[int, int, int] = (32, 256, 256)  # (D, H, W) after resampling
    patch_size: tuple[int, int, int] = (4, 16, 16)
    hidden_size: int = 768
    mlp_dim: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    window: str = "abdomen"  # CT window applied before the encoder
    channels: tuple[int, ...] = (64, 96, 192, 384, 768)  # DCFormer stage widths (stem, s1..s4)
    blocks: tuple[int, ...] = (1, 2, 3, 6, 2)  # DCFormer blocks per stage
    kernels: tuple[int, ...] = (13, 11, 9, 7)  # DCFormer 1D kernel length in s1..s4


@dataclass
class ProjectorConfig:
    """Maps encoder patch features to ``num_tokens`` visual tokens of the LLM width."""

    kind: str = "mlp"  # "mlp" (pool + 2-layer MLP, M3D) or "mixer" (Med3DVLM's dual-stream MLP-Mixer)
    num_tokens: int = 256  # mixer: must equal low_tokens[-1] + high_tokens[-1]
    # "mlp": False pools the patch tokens, then applies the MLP (M3D-LaMed); True applies the MLP to every patch
    # token, then pools, so a finding that fills part of one patch keeps a feature of its own in the pooled token
    # (the demo bundle: a 15 mm lesion is under 1/16 of a pooled token, and pooling first averaged it away)
    mlp_first: bool = False
    low_tokens: tuple[int, ...] = (192, 128)  # mixer: token count after each layer of the low-level stream
    high_tokens: tuple[int, ...] = (64, 128)  # mixer: the same for the high-level stream
    mlp_depth: int = 2  # mixer: Linear layers in each token/channel MLP


@dataclass
class LLMConfig:
    """Language model: a local Hugging Face folder (``path``) or a config built in code (``builtin``)."""

    path: str | None = None  # local folder with config.json + weights + tokenizer files
    builtin: dict[str, Any] | None = None  # Qwen2Config kwargs for a randomly initialised LM
    lora_r: int = 0  # 0 = no LoRA
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    # True: questions and reports are asked after the findings sentence of ``report.context`` (what the segmenter found
    # and measured); the demo bundle, whose 3D encoder cannot resolve a 15 mm finding
    findings_context: bool = False
    max_new_tokens: int = 256


@dataclass
class SegmenterConfig:
    """SAM2 segmenter built from the ``sam2`` package's own configs."""

    sam2_config: str = "configs/sam2.1/sam2.1_hiera_t.yaml"
    image_size: int = 512
    window: str = "abdomen"
    hydra_overrides: tuple[str, ...] = ()  # extra overrides (the tiny config shrinks Hiera with these)
    checkpoint: str | None = None  # official SAM2.1 / MedSAM2 .pt to initialise from
    key_slice_stride: int = 0  # 0 = automatic (about 16 probes per volume); see modeling/key_slices.py
    num_key_slices: int = 1
    prompt_dim: int = 256  # SAM2 prompt embedding width
    # True (engine default): a click on an already propagated slice makes it a conditioning slice, so it
    # survives the next propagation. False: upstream SAM2's default (the corrected slice stays a
    # non-conditioning output that re-propagation may overwrite); masks then equal SAM2VideoPredictor's.
    corrections_as_conditioning: bool = True
    # Propagation outside a 3D box stops once the object has ended: after ``stop_after_slices``
    # consecutive slices whose object-score logit is below ``stop_score`` (SAM2 blanks a slice below 0).
    stop_after_slices: int = 3
    stop_score: float = 0.0
    # A re-propagation past the corrected slices stops after this many slices whose mask did not change.
    settle_slices: int = 2
    prefetch_batch: int = 1  # slices per background-encoding batch (a click waits at most for one batch)
    # How a box/click object is carried to the next slice: "memory" (SAM2's memory attention, as upstream) or
    # "box" (each slice decoded from a box around the previous slice's mask, grown by ``box_margin`` of its
    # size; components not touching the previous mask are dropped outside a 3D box). "box" suits weights
    # whose memory path is weakly trained (the demo bundle); text-prompted objects always use memory + [SEG].
    propagation: str = "memory"
    # How a text-prompted object is drawn: "memory" (its [SEG] tokens decoded on key slices, then carried by SAM2's
    # memory propagation with the tokens on every slice) or "slices" (the tokens decoded on every slice without
    # memory, each slice kept where its object score reaches ``stop_score``): small findings, present on a few
    # slices, need no tracking, and the decoder is then trained exactly as it runs (configs/train, issue 25).
    text_decoding: str = "memory"
    # "slices": a slice next to a kept one keeps its mask too when its object score reaches ``grow_score`` and
    # its mask overlaps that slice's by at least half the smaller of the two (an object's slices are contiguous;
    # a finding's edge slices score lower than its centre). None: the gate alone.
    grow_score: float | None = None
    box_margin: float = 0.03  # chosen on unseen training-range phantoms 20400-20409 (0.03 / 0.05 / 0.075 / 0.1)
    # "box" outside a 3D box: the chain has left its object (the organ ended and a neighbour of another density
    # filled the box) once the mask's median HU is this far from the object's (its mask before the propagation,
    # the prompted slice on a first one); 0 turns it off.
    # 50 chosen on phantoms 20400-20409 (single-click starts: 20-100 HU tried, 40-80 equally good).
    end_hu_change: float = 50.0

    def __post_init__(self) -> None:  # the per-slice gates compare scores with these: a typo must not pass
        for name in ("stop_score", "grow_score"):
            value = getattr(self, name)
            if name == "grow_score" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"segmenter {name} must be a finite number, got {value!r}; check config.json")


@dataclass
class ModelConfig:
    name: str = "custom"
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    bridge_hidden: int = 512  # [SEG] hidden state -> Linear-ReLU-Linear -> prompt_dim
    num_seg_prompt_tokens: int = 1  # sparse prompt tokens made from one [SEG] hidden state
    region_input: bool = False  # a region encoder (modeling/region.py) feeds questions about a mask or box
    # False: the region encoder was never trained (added to a trained bundle, and no training run has trained it
    # since), so its answers about a region would be guesses; the Session refuses questions about a region
    region_trained: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        def build(klass, values):
            known = {f.name: f for f in dataclasses.fields(klass)}
            unknown = set(values) - set(known)
            if unknown:
                raise InputError(f"unknown {klass.__name__} field(s) {sorted(unknown)}; check config.json")
            kwargs = {}
            for name, value in values.items():
                sub = {"vision": VisionConfig, "projector": ProjectorConfig, "llm": LLMConfig, "segmenter": SegmenterConfig}
                if klass is ModelConfig and name in sub:
                    value = build(sub[name], value)
                elif isinstance(value, list):
                    value = tuple(value)
                kwargs[name] = value
            return klass(**kwargs)

        return build(cls, data)


# Tiny Qwen2-architecture LM: random weights, seconds on CPU.
_TINY_LLM = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)

# Hiera-t shrunk to one block per stage and one memory-attention layer: same module types and
# code paths as SAM2.1, a fraction of the compute.
_TINY_SAM2_OVERRIDES = (
    "++model.image_encoder.trunk.stages=[1,1,1,1]",
    "++model.image_encoder.trunk.global_att_blocks=[]",  # stage-change blocks cannot be global
    "++model.memory_attention.num_layers=1",
)


def tiny() -> ModelConfig:
    return ModelConfig(
        name="tiny",
        vision=VisionConfig(input_size=(16, 64, 64), patch_size=(4, 16, 16), hidden_size=64, mlp_dim=128,
                            num_layers=2, num_heads=4),
        projector=ProjectorConfig(kind="mlp", num_tokens=16),
        llm=LLMConfig(builtin=dict(_TINY_LLM), lora_r=0, max_new_tokens=48),
        segmenter=SegmenterConfig(image_size=128, hydra_overrides=_TINY_SAM2_OVERRIDES),
        bridge_hidden=128,
    )


def base() -> ModelConfig:
    return ModelConfig(
        name="base",
        vision=VisionConfig(input_size=(32, 256, 256), patch_size=(4, 16, 16), hidden_size=384, mlp_dim=1536,
                            num_layers=6, num_heads=6),
        projector=ProjectorConfig(kind="mlp", num_tokens=256),
        llm=LLMConfig(builtin=dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096,
                                   tie_word_embeddings=True), lora_r=0),
        segmenter=SegmenterConfig(image_size=512),
        bridge_hidden=512,
    )


def paper() -> ModelConfig:
    """Med3DVLM-scale reconstruction: its DCFormer (decomp_small) on 128x256x256 and its dual-stream mixer
    projector to 256 tokens (both load Med3DVLM's released weights strictly), 7B-class LLM with LoRA r16/a32."""
    return ModelConfig(
        name="paper",
        vision=VisionConfig(kind="dcformer", input_size=(128, 256, 256), hidden_size=768),
        projector=ProjectorConfig(kind="mixer", num_tokens=256),
        llm=LLMConfig(path="Qwen2.5-7B-Instruct", lora_r=16, lora_alpha=32),
        segmenter=SegmenterConfig(sam2_config="configs/sam2.1/sam2.1_hiera_b+.yaml", image_size=1024),
        bridge_hidden=4096,
    )


NAMED_CONFIGS = {"tiny": tiny, "base": base, "paper": paper}


def get_config(name: str) -> ModelConfig:
    try:
        return NAMED_CONFIGS[name]()
    except KeyError:
        raise InputError(f"unknown config {name!r}; choose one of {sorted(NAMED_CONFIGS)} or pass a bundle folder") from None


# The architecture of the demo weights (Resources/DemoWeights, trained on 32x128x128 synthetic phantoms), as a named
# config with random weights: "small". Hiera shrunk to embed_dim 48 / one head so that the whole bundle stays small;
# SAM2 runs at 256 px (2x the slice). The spec "demo" always means the trained bundle (``factory.describe``).
_SMALL_SAM2_OVERRIDES = (
    "++model.image_encoder.trunk.embed_dim=48",
    "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,1,1]",
    "++model.image_encoder.trunk.global_att_blocks=[]",
    "++model.image_encoder.neck.backbone_channel_list=[384,192,96,48]",
    "++model.memory_attention.num_layers=1",
)


def small() -> ModelConfig:
    """The demo bundle's architecture: 32x128x128 encoder input, 32 visual tokens, 4-layer LM."""
    return ModelConfig(
        name="small",
        vision=VisionConfig(input_size=(32, 128, 128), patch_size=(4, 16, 16), hidden_size=128, mlp_dim=256,
                            num_layers=3, num_heads=4),
        projector=ProjectorConfig(kind="mlp", num_tokens=32),
        llm=LLMConfig(builtin=dict(hidden_size=192, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True),
                      lora_r=0, max_new_tokens=96),
        segmenter=SegmenterConfig(image_size=256, hydra_overrides=_SMALL_SAM2_OVERRIDES),
        bridge_hidden=256,
        region_input=True,
    )


NAMED_CONFIGS["small"] = small
