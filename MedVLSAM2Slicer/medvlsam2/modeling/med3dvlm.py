"""Med3DVLM (github mirthAI/Med3DVLM, MIT; HF MagicXin/Med3DVLM-Qwen-2.5-7B): the released 3D CT VLM, for
questions and reports, built from our own DCFormer, mixer projector and a transformers Qwen2 causal LM.

A Med3DVLM folder is a Hugging Face causal-LM folder whose ``config.json`` has ``model_type`` "vlm_qwen"
(Qwen2 fields plus the vision fields Med3DVLM's code reads: ``vision_tower``, ``input_size`` (H, W, D),
``vision_select_layer``, ``mm_projector_type``, ``mm_mlp_depth``, ``proj_out_num``, ``low_input_size``,
``high_input_size``, ``low_output_size``, ``high_output_size``), safetensors weights (one file or shards with
``model.safetensors.index.json``) and tokenizer files. The weights hold the Qwen2 keys, the DCFormer under
``model.vision_tower.vision_tower.*`` and the projector under ``model.mm_projector.*``; every part loads
strictly. The encoder-only ``MagicXin/DCFormer_SigLIP`` (its CLIP model, keys ``vision_encoder.*``) loads
into our DCFormer with ``load_dcformer_encoder``.

Prompt (Med3DVLM's own): ``"<im_patch>" * 256 + text`` tokenised as one string, with text = " " + question
(its VQA format) or its caption prompt (report). Its code then keeps the first token's embedding, puts the
256 visual tokens after it and drops the next 256 embeddings; we splice the same way, since the released
weights were trained on exactly that sequence.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ..capabilities import LANGUAGE
from ..config import ProjectorConfig, VisionConfig
from ..errors import CheckpointError, InputError
from ..utils.cancel import CancelToken, check
from .prompting import REPORT_QUESTION
from .projector import build_projector
from .vision_encoder import DCFormerEncoder, build_vision_encoder

MODEL_TYPE = "vlm_qwen"
ENCODER_MODEL_TYPE = "dec_clip"  # DCFormer_SigLIP's CLIP config
IMAGE_TOKEN = "<im_patch>"
# The one place published key names map onto our modules: a prefix per part (the rest of each key is equal).
PUBLISHED_PREFIXES = {"vision_encoder": "model.vision_tower.vision_tower.", "projector": "model.mm_projector."}
ENCODER_FILE_PREFIXES = (PUBLISHED_PREFIXES["vision_encoder"], "vision_encoder.")  # VLM folder, CLIP folder
CAPTION_PROMPT = "Describe the findings of the medical image you see."  # Med3DVLM's demo default caption prompt
# Fields of our own, absent from the published config (whose code always builds DCFormer ``decomp_small``):
# lets tests build a tiny folder of the same layout.
SIZE_OVERRIDE = "medvlsam2_dcformer"
MAX_QUESTION_CHARS = 4000
MAX_NEW_TOKENS = 2048


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_config(folder: str | Path) -> dict | None:
    return _read_json(Path(folder) / "config.json")


def is_med3dvlm_folder(path: str | Path) -> bool:
    """True for a folder whose config.json says ``model_type`` "vlm_qwen" (a Med3DVLM model folder)."""
    config = _read_config(path) if Path(path).is_dir() else None
    return config is not None and config.get("model_type") == MODEL_TYPE


def is_dcformer_encoder_folder(path: str | Path) -> bool:
    """True for Med3DVLM's encoder-only CLIP folder (DCFormer_SigLIP, ``model_type`` "dec_clip")."""
    config = _read_config(path) if Path(path).is_dir() else None
    return config is not None and config.get("model_type") == ENCODER_MODEL_TYPE


# ----- weights -------------------------------------------------------------------------------------
def _weight_files(root: Path) -> dict[str, Path]:
    """Published key -> safetensors file, from ``model.safetensors.index.json`` or the single file."""
    from safetensors import safe_open

    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError):
            raise CheckpointError(f"{index} is not a safetensors index (it needs a 'weight_map')") from None
        files = {key: root / name for key, name in weight_map.items()}
        absent = sorted({str(f.name) for f in files.values() if not f.is_file()})
        if absent:
            raise CheckpointError(f"{root} is missing weight shard(s) {absent[:3]} listed in its index; copy them in")
        return files
    single = root / "model.safetensors"
    if single.is_file():
        with safe_open(str(single), framework="pt") as f:
            return {key: single for key in f.keys()}
    raise CheckpointError(f"{root} has no model.safetensors or model.safetensors.index.json (only safetensors "
                          "weights are read; .bin files are never unpickled)")


def _read_tensors(files: dict[str, Path], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose key starts with ``prefix``, the prefix removed."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for key, file in files.items():
        if key.startswith(prefix):
            by_file.setdefault(file, []).append(key)
    out = {}
    for file, keys in by_file.items():
        with safe_open(str(file), framework="pt") as f:
            out.update({key[len(prefix):]: f.get_tensor(key) for key in keys})
    return out


def check_layout(expected: dict[str, tuple], found: dict[str, tuple], where: str, family: str = "Med3DVLM") -> None:
    """Every expected key present with its shape and nothing else; else CheckpointError naming the first
    offenders of each kind (keys as published)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k]))
    problems = ([f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]]
                + [f"{k} has shape {tuple(found[k])}, expected {tuple(expected[k])}" for k in wrong[:3]])
    if problems:
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of the wrong shape"
        raise CheckpointError(f"{where} does not match {family}'s layout ({counts}): {'; '.join(problems)}")


def _shapes(module: nn.Module, prefix: str = "") -> dict[str, tuple]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, where: str) -> None:
    """Load ``state`` (keys without ``prefix``) into ``module`` after ``check_layout``."""
    check_layout(_shapes(module, prefix), {prefix + k: tuple(v.shape) for k, v in state.items()}, where)
    module.load_state_dict(state, strict=True)


def _header_shapes(files: dict[str, Path]) -> dict[str, tuple]:
    """Tensor shapes from the safetensors headers alone (a 7B folder is checked in well under a second)."""
    from safetensors import safe_open

    shapes: dict[str, tuple] = {}
    for file in sorted(set(files.values())):
        try:
            with safe_open(str(file), framework="pt") as f:
                shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
        except Exception as exc:  # safetensors raises its own types for a corrupt header
            raise CheckpointError(f"{file} is not a valid safetensors file ({str(exc)[:200]})") from None
    return shapes


# ----- layout from config.json ---------------------------------------------------------------------
def _pairs(value, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise CheckpointError(f"config.json field {name!r} must be a list of integers, got {value!r}") from None


def _vision_config(config: dict) -> VisionConfig:
    """Our DCFormer config from Med3DVLM's fields: ``input_size`` is (H, W, D) there, (D, H, W) here."""
    h, w, d = _pairs(config.get("input_size", (256, 256, 128)), "input_size")
    sizes = config.get(SIZE_OVERRIDE) or {}
    defaults = VisionConfig()
    return VisionConfig(kind="dcformer", input_size=(d, h, w), window="abdomen",
                        channels=_pairs(sizes.get("channels", defaults.channels), "channels"),
                        blocks=_pairs(sizes.get("blocks", defaults.blocks), "blocks"),
                        kernels=_pairs(sizes.get("kernels", defaults.kernels), "kernels"))


def _check_vision_fields(config: dict, where: str) -> None:
    wanted = {"vision_tower": "dcformer", "mm_projector_type": "mixer", "vision_select_layer": -2}
    for field, value in wanted.items():
        if config.get(field, value) != value:
            raise CheckpointError(f"{where}: {field} is {config.get(field)!r}; only Med3DVLM's released layout "
                                  f"({field}={value!r}) is supported")


def _projector_config(config: dict) -> ProjectorConfig:
    low, high = _pairs(config.get("low_output_size", (192, 128)), "low_output_size"), \
        _pairs(config.get("high_output_size", (64, 128)), "high_output_size")
    return ProjectorConfig(kind="mixer", num_tokens=int(config.get("proj_out_num", low[-1] + high[-1])),
                           low_tokens=low, high_tokens=high, mlp_depth=int(config.get("mm_mlp_depth", 2)))


def build_vision_parts(config: dict, llm_width: int, where: str = "config.json") -> tuple[nn.Module, nn.Module]:
    """Our DCFormer and mixer projector sized from a Med3DVLM config.json (random weights)."""
    _check_vision_fields(config, where)
    try:
        encoder = build_vision_encoder(_vision_config(config))
        for field, shape in zip(("low_input_size", "high_input_size"), encoder.output_shapes):
            if field in config and _pairs(config[field], field) != tuple(shape):
                raise CheckpointError(f"{where}: {field} is {config[field]} but the DCFormer on input_size "
                                      f"{config.get('input_size')} gives (tokens, channels) {tuple(shape)}")
        projector = build_projector(_projector_config(config), encoder.output_shapes, llm_width)
    except InputError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    return encoder, projector


def _llm_config(config: dict):
    from transformers import Qwen2Config

    return Qwen2Config(**{k: v for k, v in config.items() if k not in ("model_type", "architectures")})


def check_folder(path: str | Path) -> None:
    """Strict check of a Med3DVLM or DCFormer_SigLIP folder from its config.json and safetensors headers (no
    weights read): every tensor the model needs is there with its shape and, for Med3DVLM, nothing else.
    Raises CheckpointError naming the offending keys."""
    from transformers import Qwen2ForCausalLM

    root = Path(path)
    config = _read_config(root)
    if config is None or config.get("model_type") not in (MODEL_TYPE, ENCODER_MODEL_TYPE):
        raise CheckpointError(f"{root} has no config.json with model_type {MODEL_TYPE!r} (Med3DVLM) or "
                              f"{ENCODER_MODEL_TYPE!r} (DCFormer_SigLIP)")
    found = _header_shapes(_weight_files(root))
    if config["model_type"] == ENCODER_MODEL_TYPE:
        with torch.device("meta"):
            expected = _shapes(build_vision_encoder(_vision_config(config)), "vision_encoder.")
        found = {k: v for k, v in found.items() if k.startswith("vision_encoder.")}  # its text tower is not used
        return check_layout(expected, found, str(root))
    llm_config = _llm_config(config)
    with torch.device("meta"):
        expected = _shapes(Qwen2ForCausalLM(llm_config))
        encoder, projector = build_vision_parts(config, llm_config.hidden_size, str(root / "config.json"))
    if llm_config.tie_word_embeddings and "lm_head.weight" not in found:
        expected.pop("lm_head.weight", None)  # tied to the input embeddings: saved once
    for part, module in (("vision_encoder", encoder), ("projector", projector)):
        expected.update(_shapes(module, PUBLISHED_PREFIXES[part]))
    check_layout(expected, found, str(root))


def crop_foreground(image: torch.Tensor) -> torch.Tensor:
    """[1, D, H, W] in [0, 1] -> the box of voxels > 0, resized back to [1, D, H, W] (MONAI, trilinear).

    Med3DVLM's training volumes were cropped to their foreground (MONAI ``CropForeground``: voxels > 0, i.e.
    not black) and then resized to 128x256x256, so the body fills its field of view. Our volumes arrive
    already resized; cropping them here approximates that order. An all-black volume is left as it is.
    """
    from monai.transforms import CropForeground, Resize

    if not bool((image > 0).any()):
        return image
    cropped = CropForeground(allow_smaller=True)(image.float())
    resized = Resize(spatial_size=tuple(image.shape[1:]), mode="trilinear", align_corners=False)(cropped)
    return torch.as_tensor(resized).to(image.dtype)


# ----- the model -----------------------------------------------------------------------------------
class Med3DVLM(nn.Module):
    """Language-model protocol (see docs/ARCHITECTURE.md) over Med3DVLM's released weights."""

    capabilities = frozenset({LANGUAGE})
    provenance = "released"

    def __init__(self, vision_encoder: DCFormerEncoder, projector: nn.Module, llm, tokenizer, description: str,
                 eos_ids: set[int], max_new_tokens: int = 256) -> None:
        super().__init__()
        self.vision_encoder, self.projector, self.llm, self.tokenizer = vision_encoder, projector, llm, tokenizer
        self.description, self.eos_ids, self.max_new_tokens = description, eos_ids, max_new_tokens
        self.vision_input_size: tuple[int, int, int] = tuple(vision_encoder.input_size)
        self.vision_window = "abdomen"  # trained on soft-tissue-windowed slices scaled to [0, 1]
        self.num_image_tokens = projector.num_tokens
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    @torch.inference_mode()
    def encode_volume(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 1, D, H, W] in [0, 1] -> visual tokens [B, 256, LLM width]."""
        expected = (1, *self.vision_input_size)
        if images.dim() != 5 or tuple(images.shape[1:]) != expected:
            raise InputError(f"encoder input must be [B, {', '.join(map(str, expected))}], got {tuple(images.shape)}")
        weight = self.llm.get_input_embeddings().weight
        images = torch.stack([crop_foreground(x) for x in images])
        return self.projector(self.vision_encoder(images.to(weight.device, self.dtype)))

    def prompt_ids(self, question: str) -> torch.Tensor:
        """Token ids of Med3DVLM's prompt for ``question`` (our report question becomes its caption prompt)."""
        text = CAPTION_PROMPT if question == REPORT_QUESTION else " " + question
        ids = self.tokenizer(IMAGE_TOKEN * self.num_image_tokens + text)["input_ids"]
        if ids.count(self.image_token_id) != self.num_image_tokens:
            raise CheckpointError(f"the folder's tokenizer does not keep {IMAGE_TOKEN} as one token; it is not "
                                  "Med3DVLM's tokenizer (its tokenizer files must come with the weights)")
        return torch.tensor(ids)

    def _embed(self, ids: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Med3DVLM's splice: [first token][visual tokens][ids after position T]."""
        embeds = self.llm.get_input_embeddings()(ids[None].to(visual.device))
        t = visual.shape[1]
        return torch.cat([embeds[:, :1], visual.to(embeds.dtype), embeds[:, t + 1:]], dim=1)

    @torch.inference_mode()
    def _greedy(self, visual: torch.Tensor, question: str, cancel: CancelToken | None, limit: int) -> Iterator[int]:
        out = self.llm(inputs_embeds=self._embed(self.prompt_ids(question), visual), use_cache=True, logits_to_keep=1)
        for _ in range(limit):
            check(cancel)
            next_id = int(out.logits[0, -1].argmax())
            if next_id in self.eos_ids:
                return
            yield next_id
            out = self.llm(input_ids=torch.tensor([[next_id]], device=visual.device), cache=out.cache, use_cache=True)

    def stream_text(self, visual_tokens: torch.Tensor, question: str, cancel: CancelToken | None = None,
                    max_new_tokens: int | None = None) -> Iterator[str]:
        """Greedy answer (Med3DVLM's evaluation decoding), yielded piece by piece; ``cancel`` is checked
        between tokens. ``visual_tokens``: [1, T, C] from ``encode_volume``."""
        if not question.strip():
            raise InputError("the question is empty; type a question about the volume")
        if len(question) > MAX_QUESTION_CHARS:
            raise InputError(f"the question has {len(question)} characters; keep it under {MAX_QUESTION_CHARS}")
        limit = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if not 1 <= limit <= MAX_NEW_TOKENS:
            raise InputError(f"max_new_tokens must be 1..{MAX_NEW_TOKENS}, got {max_new_tokens}")
        if visual_tokens.dim() != 3 or visual_tokens.shape[0] != 1 or visual_tokens.shape[1] != self.num_image_tokens:
            raise InputError(f"visual tokens must be [1, {self.num_image_tokens}, C], got {tuple(visual_tokens.shape)}")
        return self._stream(visual_tokens, question, cancel, limit)

    def _stream(self, visual: torch.Tensor, question: str, cancel: CancelToken | None, limit: int) -> Iterator[str]:
        previous, generated = "", []
        for token_id in self._greedy(visual, question, cancel, limit):
            generated.append(token_id)
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            if len(text) > len(previous) and not text.endswith("\ufffd"):  # wait for a whole UTF-8 character
                yield text[len(previous):]
                previous = text


@contextlib.contextmanager
def _quiet_transformers():
    """transformers prints a load report listing the vision keys it leaves to us; we check them ourselves."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        logging.enable_progress_bar()


def _generation_settings(root: Path, config: dict, tokenizer) -> tuple[set[int], int]:
    """Stop tokens (config, tokenizer and generation_config.json together) and the default answer length
    (generation_config.json's ``max_new_tokens``, else 256 as Med3DVLM's evaluation scripts use)."""
    generation = _read_json(root / "generation_config.json") or {}
    ids: set[int] = set()
    for value in (config.get("eos_token_id"), tokenizer.eos_token_id, generation.get("eos_token_id")):
        ids.update(value if isinstance(value, list) else [] if value is None else [value])
    length = generation.get("max_new_tokens", 256)
    if not isinstance(length, int) or not 1 <= length <= MAX_NEW_TOKENS:
        raise CheckpointError(f"{root / 'generation_config.json'}: max_new_tokens must be 1..{MAX_NEW_TOKENS}, got {length!r}")
    return {int(i) for i in ids}, length


def load_med3dvlm(path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None) -> Med3DVLM:
    """Load a Med3DVLM folder strictly (LLM, DCFormer and projector); nothing is downloaded.

    ``dtype``: default bfloat16 on CUDA (as Med3DVLM runs), float32 elsewhere.
    """
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    root = Path(path)
    if is_dcformer_encoder_folder(root):
        raise InputError(f"{root} is Med3DVLM's encoder alone (DCFormer_SigLIP); it cannot answer questions. Load the "
                         "Med3DVLM-Qwen-2.5-7B folder for questions and reports (the encoder can initialise training)")
    config = _read_config(root)
    if not is_med3dvlm_folder(root) or config is None:
        raise InputError(f"{root} is not a Med3DVLM folder: its config.json must have model_type {MODEL_TYPE!r}")
    dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
    check_folder(root)  # every key and shape, before anything is loaded
    files = _weight_files(root)
    try:
        with _quiet_transformers():  # it reads config.json too and warns that "vlm_qwen" is not a tokenizer type
            tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{root} has no usable tokenizer files: {str(exc)[:300]}") from None
    try:
        with _quiet_transformers():
            llm = Qwen2ForCausalLM.from_pretrained(str(root), config=_llm_config(config), dtype=dtype, local_files_only=True,
                                                   device_map={"": str(device)} if str(device) != "cpu" else None)
    except (RuntimeError, ValueError, OSError) as exc:
        raise CheckpointError(f"{root}: the language model could not be loaded: {str(exc)[:500]}") from None
    encoder, projector = build_vision_parts(config, llm.config.hidden_size, f"{root / 'config.json'}")
    for part, module in (("vision_encoder", encoder), ("projector", projector)):
        prefix = PUBLISHED_PREFIXES[part]
        load_strict(module, _read_tensors(files, prefix), prefix, str(root))
    name = root.name
    description = (f"{name}: Med3DVLM (released; DCFormer + MLP-Mixer + Qwen2 {llm.config.hidden_size}-wide, "
                   f"{llm.config.num_hidden_layers} layers) for questions and draft reports; it cannot segment")
    eos_ids, max_new_tokens = _generation_settings(root, config, tokenizer)
    model = Med3DVLM(encoder.to(device, dtype), projector.to(device, dtype), llm, tokenizer, description, eos_ids,
                     max_new_tokens)
    return model.eval()


def load_dcformer_encoder(path: str | Path, vision: VisionConfig | None = None) -> DCFormerEncoder:
    """Med3DVLM's DCFormer from DCFormer_SigLIP (a folder: its config.json + safetensors, keys
    ``vision_encoder.*``), from a Med3DVLM folder, or from a ``.safetensors`` / weights-only ``.bin`` state dict
    with keys ``encoder.*``, loaded strictly. ``vision`` (e.g. ``paper().vision``) sets the architecture and input
    size; by default they come from the folder's config.json (decomp_small on 128x256x256 when it has none)."""
    from safetensors.torch import load_file

    root = Path(path)
    config = (_read_config(root) if root.is_dir() else None) or {}
    if root.is_dir():
        files = _weight_files(root)
        prefix = next((p for p in ENCODER_FILE_PREFIXES if any(k.startswith(p) for k in files)), None)
        if prefix is None:
            raise CheckpointError(f"{root} holds no DCFormer weights (keys under {' or '.join(ENCODER_FILE_PREFIXES)})")
        state = _read_tensors(files, prefix)
    elif root.suffix == ".safetensors":
        state, prefix = load_file(str(root)), ""
    elif root.suffix in (".bin", ".pt", ".pth"):
        try:
            state, prefix = torch.load(str(root), map_location="cpu", weights_only=True), ""
        except Exception as exc:  # weights_only refuses anything but tensors: say so, never unpickle
            raise CheckpointError(f"{root} is not a plain state dict of tensors: {str(exc)[:200]}") from None
    else:
        raise InputError(f"{root} is neither a DCFormer_SigLIP / Med3DVLM folder nor a .safetensors/.bin state dict")
    encoder = build_vision_encoder(vision or _vision_config(config))
    load_strict(encoder, state, prefix, str(root))
    return encoder.eval()
