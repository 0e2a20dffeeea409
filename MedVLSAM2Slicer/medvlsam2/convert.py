"""``weights convert``: a released ``.bin``/``.pth`` checkpoint -> ``.safetensors`` plus a sha256 record.

Some releases ship pickles (SegVol's ``pytorch_model.bin``: a dict of tensors; VoxTell's nnU-Net
``fold_0/checkpoint_final.pth``: ``{"network_weights": state_dict, "optimizer_state": ..., "logging": ...,
"init_args": {..., "device": torch.device}, "trainer_name": str, ...}`` with numpy float64 scalars in its
training log). They are read once with ``torch.load(weights_only=True)``, which builds nothing but tensors
and plain values; numpy's numeric scalars are the only extra globals allowed (numpy refuses object-dtype
scalars). Anything else fails closed, naming what was found, and nothing is written.

What is kept: the model's weights only (``network_weights`` of an nnU-Net checkpoint, ``model`` of a SAM2
one, ``state_dict`` of a Lightning-style one, else the top level when it is a flat dict of tensors).
Optimizer state and training logs are dropped; top-level plain scalars (epoch, trainer name) are recorded
in the sidecar ``<output>.json`` next to the source's and the output's sha256.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import CheckpointError, InputError

CONVERTIBLE = (".bin", ".pth", ".pt", ".ckpt")
WEIGHT_KEYS = ("network_weights", "model", "state_dict")  # nnU-Net, SAM2, Lightning: where the weights are
MAX_BYTES = 32 << 30  # a checkpoint larger than this is not one of the releases we read
NUMERIC_KINDS = "biufc"
NUMERIC_DTYPES = ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float16", "Float32",
                  "Float64", "Complex64", "Complex128")  # numpy.dtypes classes a numeric scalar's pickle names


def convert(source: str | os.PathLike, output: str | os.PathLike | None = None) -> dict:
    """Convert ``source`` to ``output`` (default: ``default_output``); returns the record
    also written to ``<output>.json``. Raises ``CheckpointError``/``InputError`` and writes nothing on refusal."""
    from safetensors.torch import save_file

    from .weights import sha256_of

    src = Path(source)
    if not src.is_file():
        raise InputError(f"no such file: {src}")
    if src.suffix.lower() not in CONVERTIBLE:
        raise InputError(f"{src.name}: `weights convert` reads a PyTorch checkpoint ({', '.join(CONVERTIBLE)}); "
                         "a .safetensors file needs no conversion")
    size = src.stat().st_size
    if not 0 < size <= MAX_BYTES:
        raise CheckpointError(f"{src.name} has {size} bytes: empty or larger than {MAX_BYTES >> 30} GB")
    out = Path(output) if output else default_output(src)
    if out.suffix != ".safetensors" or out.resolve() == src.resolve():
        raise InputError(f"the output must be a new .safetensors file, got {out}")
    data = read_checkpoint(src)
    kept, tensors = _weights_of(data, src.name)
    record = {"source": src.name, "source_bytes": size, "source_sha256": sha256_of(src), "kept": kept,
              "tensors": len(tensors), "parameters": int(sum(t.numel() for t in tensors.values())),
              "dropped": {k: _summary(v) for k, v in data.items() if k != kept and not _is_scalar(v)} if kept else {},
              "scalars": {k: _plain(v) for k, v in data.items() if k != kept and _is_scalar(v)} if kept else {}}
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    try:
        save_file(_unshared(tensors), str(part), metadata={"source": src.name, "source_sha256": record["source_sha256"]})
        record.update(output=out.name, sha256=sha256_of(part))
        part.replace(out)
    finally:
        part.unlink(missing_ok=True)
    sidecar(out).write_text(json.dumps(record, indent=2))
    return record


def default_output(source: Path) -> Path:
    """Beside the source, Hugging Face's name for a ``pytorch_model*.bin`` (``model*.safetensors``), else the same
    name with ``.safetensors``."""
    name = Path(source).with_suffix(".safetensors").name
    return Path(source).with_name("model" + name[len("pytorch_model"):] if name.startswith("pytorch_model") else name)


def sidecar(output: Path) -> Path:
    """Where the record of a converted file lives."""
    return output.with_name(output.name + ".json")


def read_checkpoint(path: Path):
    """``torch.load(weights_only=True)`` with numpy numeric scalars allowed; every leaf checked."""
    import numpy as np
    import torch

    from numpy._core.multiarray import scalar

    try:
        numeric = [getattr(np.dtypes, f"{t}DType") for t in NUMERIC_DTYPES]
        with torch.serialization.safe_globals([scalar, np.dtype, *numeric]):
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # the weights-only unpickler names the global it refused
        found = _refused_global(str(exc))
        raise CheckpointError(f"refused {path.name}: it holds {found or 'something other than tensors and plain values'}"
                              f" ({type(exc).__name__}); only tensors and plain scalars are converted, nothing was "
                              "written") from None
    bad = _foreign(data, path.name)
    if bad:
        raise CheckpointError(f"refused {path.name}: {bad}; only tensors and plain scalars are converted, nothing was "
                              "written")
    return data


def _refused_global(message: str) -> str | None:
    """The global the weights-only unpickler refused, from its message (None: it did not name one)."""
    import re

    found = re.search(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", message)
    return f"a {found.group(1) or found.group(2)} object" if found else None


def _foreign(value, where: str, depth: int = 0) -> str | None:
    """The first leaf that is not a tensor or plain value, as 'where is a TYPE' (None: all fine)."""
    import numpy as np
    import torch

    if depth > 32:
        return f"{where} nests deeper than 32 levels"
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                return f"{where} has a {type(k).__name__} key"
            found = _foreign(v, f"{where}.{k}", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        return next((f for i, v in enumerate(value) if (f := _foreign(v, f"{where}[{i}]", depth + 1))), None)
    if isinstance(value, (torch.Tensor, str, int, float, bool, type(None), torch.device, torch.dtype, torch.Size)):
        return None
    if isinstance(value, np.generic) and value.dtype.kind in NUMERIC_KINDS:
        return None
    return f"{where} is a {type(value).__module__}.{type(value).__name__}"


def _weights_of(data, name: str) -> tuple[str | None, dict]:
    """(the key the weights were under or None for the top level, {name: tensor})."""
    import torch

    if isinstance(data, dict):
        kept = next((k for k in WEIGHT_KEYS if isinstance(data.get(k), dict)), None)
        sd = data[kept] if kept else data
        if sd and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
            return kept, dict(sd)
    raise CheckpointError(f"{name} holds no state dict: expected a dict of tensors, or one under "
                          f"{', '.join(repr(k) for k in WEIGHT_KEYS)}")


def _unshared(tensors: dict) -> dict:
    """Contiguous tensors with their own storage (safetensors refuses shared or strided ones)."""
    seen, out = set(), {}
    for k, t in tensors.items():
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        t = t.detach().contiguous()
        out[k] = t.clone() if ptr is not None and ptr in seen else t
        if ptr is not None:
            seen.add(ptr)
    return out


def _is_scalar(value) -> bool:
    import numpy as np

    return isinstance(value, (str, int, float, bool, np.generic))


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _summary(value) -> str:
    """A short description of a dropped entry (counts, never values)."""
    import torch

    def count(v) -> int:
        if isinstance(v, torch.Tensor):
            return 1
        if isinstance(v, dict):
            return sum(count(x) for x in v.values())
        if isinstance(v, (list, tuple)):
            return sum(count(x) for x in v)
        return 0

    n = count(value)
    return f"{type(value).__name__} with {n} tensor(s)" if n else type(value).__name__
