"""The one model factory: a model spec -> a loaded model that says what it can do.

A spec is, tried in this order:
- ``demo``: the project's trained demo bundle (Resources/DemoWeights);
- a folder: a Med3DVLM folder (``config.json`` with ``model_type`` "vlm_qwen"), an M3D-LaMed ("lamed_phi3")
  or SegVol ("segvol") folder, a VoxTell folder (``plans.json`` + ``fold_0/checkpoint_final``), or our
  MedVL-SAM2 bundle;
- a ``.yaml``/``.yml`` recipe combining parts: ``segmenter: SPEC``, ``language: SPEC`` and/or
  ``text_segmenter: SPEC`` (a released text segmenter whose masks seed SAM2 objects; optional ``image_size``, ``window``);
- a released segmenter file: an official SAM2.1/MedSAM2 ``{"model": state_dict}`` ``.pt`` or a
  ``.safetensors`` file (architecture inferred from its shapes);
- a named config (``tiny``, ``base``, ``paper``, ``small``: random weights; ``small`` is the demo bundle's shape);
- an installed weights-manifest name (``medsam2-latest``, ``sam2.1-hiera-tiny``, ``med3dvlm-qwen2.5-7b``...).

``describe(spec)`` says what a spec is and can do without torch and without loading it (the Slicer panel
uses it); ``load_model(spec, device, image_size)`` builds it. Nothing is downloaded here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .capabilities import ALL, INTERACTIVE, LANGUAGE, PROVENANCES, TEXT_SEGMENTATION
from .errors import CapabilityError, CheckpointError, InputError
from .released.base import FOLDER_MODEL_TYPES, SIZES_FIELD

SEGMENTER_SUFFIXES = (".pt", ".pth", ".safetensors")
RECIPE_SUFFIXES = (".yaml", ".yml")
MODEL_FILE_SUFFIXES = SEGMENTER_SUFFIXES + RECIPE_SUFFIXES  # every file a spec may name (the panel's chooser too)
DEMO = "demo"  # the project's trained demo bundle, wherever it is installed
RECIPE_PARTS = ("segmenter", "language", "text_segmenter")
RECIPE_KEYS = {*RECIPE_PARTS, "image_size", "window"}
NATIVE_SIZE_SAM2 = 1024  # SAM2.1 was trained at 1024 px; MedSAM2 at 512 (its manifest entry says so)


@dataclass(frozen=True)
class ModelInfo:
    """What a spec is, torch-free. ``kind``: bundle | named | segmenter | med3dvlm | m3d-lamed | segvol | voxtell | recipe."""

    spec: str
    kind: str
    description: str
    capabilities: frozenset[str]
    provenance: str
    path: str | None = None  # the file or folder loaded (None for a named config)
    sam2_config: str | None = None  # segmenters: the sam2 config from the manifest (None: inferred at load)
    image_size: int | None = None  # segmenters: native image size


# ----- what a spec is (no torch) ---------------------------------------------------------------
def describe(spec: str) -> ModelInfo:
    """Classify ``spec`` without loading weights; raises ``InputError`` saying what is accepted."""
    from .config import NAMED_CONFIGS

    spec = str(spec).strip()
    if not spec:
        raise InputError("the model spec is empty; give a bundle folder, a .pt/.safetensors file, a recipe .yaml, "
                         "a named config or an installed weights name")
    if spec == DEMO:
        from .resources import resource_path

        spec = str(resource_path("DemoWeights", must_exist=True))
    p = Path(spec).expanduser()
    if p.is_dir():
        return _describe_folder(spec, p)
    if p.is_file():
        if p.suffix.lower() in RECIPE_SUFFIXES:
            return _describe_recipe(spec, p)
        if p.suffix.lower() in SEGMENTER_SUFFIXES:
            entry = _entry_for_file(p.name)
            size = entry.image_size if entry else (512 if "medsam2" in p.name.lower() else NATIVE_SIZE_SAM2)
            return ModelInfo(spec, "segmenter", f"released SAM2 segmenter {p.name}", frozenset({INTERACTIVE}),
                             "released", str(p), entry.config if entry else None, size)
        raise InputError(f"{p.name} is not a model file: use a SAM2.1/MedSAM2 .pt or .safetensors checkpoint, a recipe "
                         ".yaml, or a folder (MedVL-SAM2 bundle or Med3DVLM)")
    if spec in NAMED_CONFIGS:
        return ModelInfo(spec, "named", f"config '{spec}' with random weights", ALL, "random")
    return _describe_manifest_name(spec)


def _describe_folder(spec: str, p: Path) -> ModelInfo:
    from .released.voxtell import is_voxtell_folder, provenance_of

    if is_voxtell_folder(p):
        return ModelInfo(spec, "voxtell", f"VoxTell {p.name}", frozenset({TEXT_SEGMENTATION}), provenance_of(p), str(p))
    config = _read_json(p / "config.json")
    if config.get("model_type") == "vlm_qwen":
        return ModelInfo(spec, "med3dvlm", f"Med3DVLM {p.name}", frozenset({LANGUAGE}), "released", str(p))
    if config.get("model_type") in FOLDER_MODEL_TYPES:  # M3D-LaMed, SegVol
        return _describe_released_text(spec, p, config)
    if config.get("model_type") == "dec_clip":
        raise CapabilityError(f"{p.name} is Med3DVLM's DCFormer_SigLIP image encoder alone (for training): it cannot "
                              "segment or answer. Load the Med3DVLM-Qwen-2.5-7B folder for questions and reports")
    if not (p / "config.json").is_file():
        raise InputError(f"{p} is neither a MedVL-SAM2 bundle nor a Med3DVLM folder: it has no config.json")
    meta = _read_json(p / "metadata.json")
    caps = frozenset(meta.get("capabilities", ALL)) & ALL
    return ModelInfo(spec, "bundle", str(meta.get("name") or f"MedVL-SAM2 bundle {p.name}"), caps,
                     _bundle_provenance(meta), str(p))


def _describe_released_text(spec: str, p: Path, config: dict) -> ModelInfo:
    kind, family, caps = FOLDER_MODEL_TYPES[config["model_type"]]
    provenance = "random" if SIZES_FIELD in config else "released"  # our shrunk test folders say so
    return ModelInfo(spec, kind, f"{family} {p.name} ({provenance})", caps, provenance, str(p))


def _bundle_provenance(meta: dict) -> str:
    """metadata.json's ``provenance``, else "phantom-trained" / "trained" from ``trained_on``, else "random"."""
    if meta.get("provenance") in PROVENANCES:
        return meta["provenance"]
    trained_on = str(meta.get("trained_on", "")).lower()
    if "synthetic phantom" in trained_on:
        return "phantom-trained"
    return "trained" if trained_on else "random"


def _describe_recipe(spec: str, p: Path) -> ModelInfo:
    recipe = read_recipe(p)
    parts = {role: describe(recipe[role]) for role in RECIPE_PARTS if role in recipe}
    caps = frozenset()
    for role, capability in zip(RECIPE_PARTS, (INTERACTIVE, LANGUAGE, TEXT_SEGMENTATION)):
        if role in parts:
            caps |= parts[role].capabilities & {capability}
    provenance = min((i.provenance for i in parts.values()), key=PROVENANCES.index)
    text = " + ".join(f"{role}: {i.description}" for role, i in parts.items())
    return ModelInfo(spec, "recipe", f"recipe {p.name} ({text})", caps, provenance, str(p))


def read_recipe(path: Path) -> dict:
    """A recipe's keys, with relative part paths resolved against the recipe's folder."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read the recipe {path.name}: {exc}") from None
    if not isinstance(data, dict) or not (set(RECIPE_PARTS) & set(data)):
        raise InputError(f"the recipe {path.name} needs `segmenter: SPEC`, `language: SPEC` and/or `text_segmenter: SPEC`")
    unknown = set(data) - RECIPE_KEYS
    if unknown:
        raise InputError(f"the recipe {path.name} has unknown key(s) {sorted(unknown)}; allowed: {sorted(RECIPE_KEYS)}")
    for role in RECIPE_PARTS:
        if role in data:
            value = str(data[role])
            candidate = (path.parent / value).expanduser()
            data[role] = str(candidate) if not Path(value).is_absolute() and candidate.exists() else value
            if Path(data[role]).suffix.lower() in RECIPE_SUFFIXES:
                raise InputError(f"the recipe {path.name}: a part cannot itself be a recipe")
    return data


def _entry_for_file(filename: str):
    from .weights import load_manifest

    try:
        return next((e for e in load_manifest().values() if e.file == filename), None)
    except InputError:
        return None


def _describe_manifest_name(spec: str) -> ModelInfo:
    from .config import NAMED_CONFIGS
    from .weights import installed_path, load_manifest

    manifest = load_manifest()
    if spec not in manifest:
        raise InputError(f"unknown model {spec!r}: give a bundle folder, a Med3DVLM folder, a SAM2.1/MedSAM2 .pt or "
                         f".safetensors file, a recipe .yaml, a named config ({', '.join(sorted(NAMED_CONFIGS))}) or a "
                         f"weights name ({', '.join(sorted(manifest))})")
    entry, path = manifest[spec], installed_path(spec, manifest)
    if entry.kind != "sam2":  # a model folder (Med3DVLM, VoxTell, ...)
        return _describe_folder(spec, path)
    return ModelInfo(spec, "segmenter", f"released SAM2 segmenter {spec}", frozenset({INTERACTIVE}), "released",
                     str(path), entry.config, entry.image_size or NATIVE_SIZE_SAM2)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    return data if isinstance(data, dict) else {}


# ----- loading ---------------------------------------------------------------------------------
def load_model(spec: str, device: str = "cpu", image_size: int | None = None, window: str | None = None,
               precision: str = "auto"):
    """Load ``spec`` (see the module docstring) on ``device`` in eval mode.

    ``image_size`` overrides the segmenter's SAM2 input size (default: native, e.g. MedSAM2 512,
    SAM2.1 1024, a bundle's own); ``window`` overrides a released segmenter's CT window (default abdomen);
    ``precision`` (auto | fp32 | bf16 | fp16) is the segmenter's inference autocast (``utils.device``).
    The model has ``.capabilities``, ``.provenance`` and ``.description``.
    """
    import torch

    from .utils.device import autocast_dtype

    if image_size is not None and (int(image_size) != image_size or not 64 <= image_size <= 2048 or image_size % 16):
        raise InputError(f"--image-size must be a multiple of 16 between 64 and 2048, got {image_size}")
    autocast_dtype(torch.device(device), precision)  # an unusable precision fails before any weights are read
    info = describe(spec)
    if info.kind == "recipe":
        model = _load_recipe(info, device, image_size, window)
    elif info.kind == "segmenter":
        model = load_segmenter(info, device, image_size, window)
    elif info.kind == "med3dvlm":
        model = _load_med3dvlm(info, device)
    elif info.kind == "voxtell":
        from .released.voxtell import load_voxtell

        model = load_voxtell(info.path, device)
    elif info.kind in ("m3d-lamed", "segvol"):
        model = _load_released_text(info, device)
    else:
        model = _load_medvlsam2(info, device, image_size)
    if getattr(model, "segmenter", None) is not None:  # Med3DVLM has none
        model.segmenter.precision = precision
    return model


def _load_medvlsam2(info: ModelInfo, device: str, image_size: int | None):
    from .checkpoint import load_bundle
    from .config import get_config

    if info.kind == "bundle":
        model = load_bundle(info.path, device, image_size=image_size)
    else:
        config = get_config(info.spec)
        if image_size:
            config.segmenter.image_size = image_size
        model = new_model(config).to(device).eval()
    model.capabilities, model.provenance, model.description = info.capabilities, info.provenance, info.description
    # the presence threshold calibrated on held-out phantoms (plausibility.presence), None when not calibrated
    model.presence = _read_json(Path(info.path) / "metadata.json").get("presence") if info.kind == "bundle" else None
    return model


def new_model(config, tokenizer=None, meta: bool = False):
    """A MedVL-SAM2 model of ``config`` with random weights (the LLM's own when ``config.llm.path`` names a local
    folder), as training starts one. ``meta``: every part but SAM2 on PyTorch's meta device (shapes only, no memory;
    SAM2's builder cannot run there, so it is built on the CPU first)."""
    import torch

    from .modeling.medvlsam2 import MedVLSAM2
    from .modeling.segmenter import build_segmenter

    if not meta:
        return MedVLSAM2.from_config(config, tokenizer)
    segmenter = build_segmenter(config.segmenter)
    with torch.device("meta"):
        return MedVLSAM2.from_config(config, tokenizer, segmenter=segmenter)


def load_segmenter(info: ModelInfo, device: str = "cpu", image_size: int | None = None, window: str | None = None):
    """A segmenter-only model from an official checkpoint: architecture from the manifest or the file's shapes."""
    from .config import SegmenterConfig
    from .modeling.parts import SegmenterModel
    from .modeling.segmenter import build_segmenter, infer_sam2_config, load_sam2_state_dict, read_state_dict

    name = Path(info.path).name
    sd = read_state_dict(info.path)
    inferred = infer_sam2_config(sd, name)
    if info.sam2_config and info.sam2_config != inferred:
        raise CheckpointError(f"{name} holds a {_size_name(inferred)} model but {info.spec} is a "
                              f"{_size_name(info.sam2_config)}: import the right file for this entry")
    size = image_size or info.image_size or NATIVE_SIZE_SAM2
    cfg = SegmenterConfig(sam2_config=inferred, image_size=size, window=window or SegmenterConfig.window)
    predictor = build_segmenter(cfg, device)
    load_sam2_state_dict(predictor, {k: v.to(device) for k, v in sd.items()}, name)
    text = f"{info.description} ({_size_name(inferred)}, {size} px)"
    return SegmenterModel(predictor, cfg.window, text).eval()


def _size_name(sam2_config: str) -> str:
    return "hiera-" + Path(sam2_config).stem.rsplit("_", 1)[-1]


def _load_med3dvlm(info: ModelInfo, device: str):
    try:
        from .modeling.med3dvlm import load_med3dvlm
    except ImportError:
        raise CapabilityError(f"{info.spec} is a Med3DVLM folder, but this installation has no Med3DVLM loader "
                              "(medvlsam2.modeling.med3dvlm); update medvlsam2") from None
    model = load_med3dvlm(info.path, device)
    model.description = getattr(model, "description", None) or info.description
    return model


def _load_released_text(info: ModelInfo, device: str):
    from .released.folders import load_m3d_lamed, load_segvol

    load = load_m3d_lamed if info.kind == "m3d-lamed" else load_segvol
    return load(info.path, device, provenance=info.provenance)


def _load_recipe(info: ModelInfo, device: str, image_size: int | None, window: str | None):
    from .modeling.parts import RecipeModel

    recipe = read_recipe(Path(info.path))
    image_size = image_size or recipe.get("image_size")
    window = window or recipe.get("window")
    seg = load_model(recipe["segmenter"], device, image_size, window) if "segmenter" in recipe else None
    lang = load_model(recipe["language"], device) if "language" in recipe else None
    text = load_model(recipe["text_segmenter"], device) if "text_segmenter" in recipe else None
    if seg is not None and INTERACTIVE not in seg.capabilities:
        raise CapabilityError(f"the recipe's segmenter {recipe['segmenter']!r} cannot segment from clicks or boxes")
    if lang is not None and LANGUAGE not in lang.capabilities:
        raise CapabilityError(f"the recipe's language part {recipe['language']!r} cannot answer questions")
    if text is not None and not hasattr(text, "segment_target"):
        raise CapabilityError(f"the recipe's text_segmenter {recipe['text_segmenter']!r} is not a released text "
                              "segmenter (a VoxTell, SegVol or M3D-LaMed folder)")
    if seg is None or lang is None:
        model = seg if seg is not None else lang
    else:
        model = RecipeModel(seg, lang, info.description).eval()
    if text is not None:
        model = with_text_segmenter(model, text)
    model.description = info.description
    return model


def with_text_segmenter(model, text):
    """``model`` (a SAM2 segmenter, a language model, both, or None) whose typed prompts go to ``text``: the
    Session seeds an object from each of its masks (SAM2 refines it where the model has a segmenter)."""
    if model is None:
        return text
    model.text_segmenter = text
    model.capabilities = frozenset(model.capabilities) | {TEXT_SEGMENTATION}
    model.provenance = min((model.provenance, text.provenance), key=PROVENANCES.index)
    return model
