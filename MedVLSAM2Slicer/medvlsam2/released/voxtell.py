"""VoxTell (MIC-DKFZ): free-text prompt -> 3D mask, run through the ``voxtell`` package (see ``voxtell_adapter``).

A VoxTell folder is the release's model folder (``mrokuss/VoxTell``, ``voxtell_v1.1/``): ``plans.json`` (nnU-Net
plans: architecture and patch size) and ``fold_0/checkpoint_final.pth``, converted once by ``medvlsam2 weights
convert`` (or ``weights import``/``download``) to ``fold_0/checkpoint_final.safetensors``: only that file is read.
Text: the published embedding bank ``text_embeddings.npz`` (in the folder, or at ``../embeddings/<folder
name>/`` as the repository lays it out) answers the prompts it lists; other prompts need the Qwen3-Embedding-4B
folder (``Qwen3-Embedding-4B/`` inside the VoxTell folder, or the installed ``qwen3-embedding-4b`` weights).

The text-decoder sizes upstream hard-codes in its predictor (query width, text width, heads, fused stages,
memory layer) are read from the checkpoint's shapes, so the released file gives upstream's values and a small
file in the same layout gives a small network. Inference is upstream's: RAS (nibabel's ``io_orientation``, as
nnU-Net's ``NibabelIOWithReorient``), crop to non-zero, z-score, native spacing, sliding window step 0.5,
sigmoid > 0.5; the mask is mapped back to the input's IJK grid here.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from ..capabilities import TEXT_SEGMENTATION
from ..errors import CheckpointError, InputError
from .base import TargetMask, not_found

PLANS = "plans.json"
CHECKPOINT = "fold_0/checkpoint_final.pth"
CONVERTED = "fold_0/checkpoint_final.safetensors"
BANK = "text_embeddings.npz"
TEXT_ENCODER = "Qwen3-Embedding-4B"
TEXT_ENCODER_ENTRY = "qwen3-embedding-4b"
MAX_PROMPT_CHARS = 1000


def is_voxtell_folder(path: str | Path) -> bool:
    p = Path(path)
    return (p / PLANS).is_file() and ((p / CONVERTED).is_file() or (p / CHECKPOINT).is_file())


def safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file (shapes, dtypes, ``__metadata__``) without reading weights."""
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if not 0 < n <= 100 << 20:
                raise ValueError(f"header length {n}")
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, struct.error, KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file ({exc})") from None
    if path.stat().st_size != 8 + n + end:
        raise CheckpointError(f"{path.name} is truncated or padded: {path.stat().st_size} bytes, its header says "
                              f"{8 + n + end}; convert or download it again")
    return header


def provenance_of(path: str | Path) -> str:
    """"random" when the folder's ``metadata.json`` says so (folders made for tests), else "released"."""
    meta = Path(path) / "metadata.json"
    try:
        return "random" if meta.is_file() and json.loads(meta.read_text()).get("provenance") == "random" else "released"
    except (OSError, ValueError, AttributeError):
        return "released"


def read_plans(folder: Path) -> tuple[dict, list[int]]:
    """(the 3d_fullres architecture, its patch size) from plans.json."""
    try:
        cfg = json.loads((folder / PLANS).read_text())["configurations"]["3d_fullres"]
        return cfg["architecture"], [int(s) for s in cfg["patch_size"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{folder / PLANS} is not VoxTell's nnU-Net plans (configurations.3d_fullres."
                              f"architecture and patch_size): {exc}") from None


def converted_weights(folder: Path) -> Path:
    path = folder / CONVERTED
    if not path.is_file():
        raise CheckpointError(f"{folder.name} has {CHECKPOINT} but no {CONVERTED}: convert it once with "
                              f"`medvlsam2 weights convert {folder / CHECKPOINT}` (pickles are never loaded directly)")
    return path


def hyperparameters(shapes: dict[str, list[int]], configs: dict[int, dict]) -> dict:
    """VoxTellModel's text-decoder arguments, from the checkpoint's tensor shapes (published names)."""
    try:
        stages = sum(1 for k in shapes if k.startswith("project_to_decoder_channels.") and k.endswith(".0.weight"))
        heads = shapes["project_to_decoder_channels.1.2.weight"][0] // configs[1]["channels"] if stages > 1 else 1
        tokens, width = shapes["pos_embed"][0], shapes["project_bottleneck_embed.0.weight"][1]
        layer = next(i for i, c in configs.items() if c["channels"] == width and int(np.prod(c["shape"])) == tokens)
        return {"decoder_layer": layer, "text_embedding_dim": shapes["project_text_embed.0.weight"][1],
                "num_maskformer_stages": stages, "num_heads": heads, "query_dim": shapes["project_text_embed.2.weight"][0],
                "project_to_decoder_hidden_dim": shapes["project_to_decoder_channels.0.0.weight"][0]}
    except (KeyError, StopIteration, IndexError) as exc:
        raise CheckpointError(f"the checkpoint is not a VoxTell network: its text decoder does not match VoxTell's "
                              f"layout ({type(exc).__name__}: {exc})") from None


def build(folder: str | Path, device: str = "meta"):
    """(network, patch size, the converted file's header) for ``folder``; on "meta" nothing is allocated."""
    import torch

    from ..modeling.segmenter import state_dict_mismatch
    from . import voxtell_adapter as adapter

    root = Path(folder)
    adapter.require_package()
    architecture, patch = read_plans(root)
    header = safetensors_header(converted_weights(root))
    shapes = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    try:
        with torch.device(device):
            network = adapter.build_network(architecture, hyperparameters(shapes, adapter.decoder_configs()))
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise CheckpointError(f"{root / PLANS} does not describe a network VoxTell can build: {exc}") from None
    own = {k: v for k, v in network.state_dict().items()}
    problems = state_dict_mismatch({k: torch.empty(s, device="meta") for k, s in shapes.items()}, own)
    if problems:
        raise CheckpointError(f"{root.name}/{CONVERTED} does not match its plans.json: " + "; ".join(problems))
    return network, patch, header


def check_folder(folder: str | Path) -> None:
    """Every tensor's key and shape against the network plans.json describes (no weights read)."""
    build(folder, "meta")


def find_bank(root: Path) -> Path | None:
    for path in (root / BANK, root.parent / "embeddings" / root.name / BANK):
        if path.is_file():
            return path
    return None


def find_text_encoder(root: Path) -> Path | None:
    """Qwen3-Embedding-4B: inside the folder, else the installed weights entry (None: only the bank)."""
    if (root / TEXT_ENCODER / "config.json").is_file():
        return root / TEXT_ENCODER
    from ..weights import load_manifest, weight_path

    try:
        if TEXT_ENCODER_ENTRY in load_manifest():
            path = weight_path(TEXT_ENCODER_ENTRY)
            return path if (path / "config.json").is_file() else None
    except InputError:
        return None
    return None


def to_ras(volume) -> tuple[np.ndarray, np.ndarray]:
    """The (z, y, x) RAS array nnU-Net's NibabelIOWithReorient would give for ``volume``, and the orientation."""
    from nibabel.orientations import apply_orientation, io_orientation

    ornt = io_orientation(volume.ijk_to_ras())
    return apply_orientation(volume.array.transpose(2, 1, 0), ornt).transpose(2, 1, 0), ornt


def from_ras(mask_zyx: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Inverse of ``to_ras``: a (z, y, x) RAS mask back to the input's (k, j, i) grid."""
    from nibabel.orientations import apply_orientation

    inverse = np.zeros_like(ornt)  # input axis a went to axis ornt[a, 0] (flipped when ornt[a, 1] is -1): undo it
    for axis, (to, flip) in enumerate(ornt):
        inverse[int(to)] = (axis, flip)
    return np.ascontiguousarray(apply_orientation(mask_zyx.transpose(2, 1, 0), inverse).transpose(2, 1, 0))


class VoxTell:
    """A loaded VoxTell folder: the ``TextSegmenter`` protocol (``medvlsam2.released.base``)."""

    capabilities = frozenset({TEXT_SEGMENTATION})
    kind = "voxtell"
    referring = False  # free text is embedded as a whole, but there is no referring answer

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        import torch
        from safetensors.torch import load_file

        from . import voxtell_adapter as adapter

        root = Path(folder)
        network, patch, _ = build(root, "cpu")
        try:
            network.load_state_dict(load_file(str(root / CONVERTED)), strict=True)  # keys and shapes checked by build
        except Exception as exc:  # safetensors' own error types for corrupt data
            raise CheckpointError(f"{root.name}/{CONVERTED} cannot be read ({type(exc).__name__}: {exc}); convert or "
                                  "download it again") from None
        bank_path, encoder = find_bank(root), find_text_encoder(root)
        bank = adapter.load_bank(str(bank_path)) if bank_path else None
        self.provenance = provenance_of(root)
        self.description = f"VoxTell {root.name} ({self.provenance})"
        self.has_text_encoder = encoder is not None
        self.bank_size = len(bank or {})
        self._predictor = adapter.make_predictor(network.to(device), patch, torch.device(device), bank,
                                                 str(encoder) if encoder else None)

    def segment_target(self, volume, target: str, cancel=None) -> TargetMask:
        from ..utils.cancel import check
        from . import voxtell_adapter as adapter

        prompt = " ".join(str(target).split())
        if not prompt or len(prompt) > MAX_PROMPT_CHARS:
            raise InputError(f"a VoxTell prompt is 1 to {MAX_PROMPT_CHARS} characters, got {len(prompt)}")
        bank = self._predictor.embedding_bank or {}
        if prompt.lower() not in bank and not self.has_text_encoder:
            raise InputError(f"VoxTell's embedding bank ({self.bank_size} prompts) has no entry for this prompt and no "
                             f"Qwen3-Embedding-4B is installed to embed it: run `medvlsam2 weights download "
                             f"{TEXT_ENCODER_ENTRY}`, or use a prompt the bank lists")
        check(cancel)
        data, ornt = to_ras(volume)
        embedding = adapter.embed(self._predictor, prompt)
        check(cancel)
        mask = from_ras(adapter.predict(self._predictor, data, embedding, lambda: bool(cancel and cancel.cancelled)),
                        ornt)
        if not mask.any():
            return not_found(prompt, "VoxTell's mask for it is empty")
        return TargetMask(prompt, mask)


def load_voxtell(folder: str | Path, device: str = "cpu") -> VoxTell:
    return VoxTell(folder, device)
