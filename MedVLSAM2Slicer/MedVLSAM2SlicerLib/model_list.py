"""The panel's model list: each choice with what it is before anything is downloaded or loaded (Qt-free).

Manifest weights are described by their weight-manager rows (``medvlsam2.weights.list_weights``: size,
licence, GPU memory, what they serve); everything else (the demo bundle, random configs, a chosen file or
folder) by ``medvlsam2.factory.describe``, which reads no weights.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from medvlsam2.errors import MedVLSAM2Error

from .connection import NAMED_CONFIGS, demo_weights

OTHER = "other"  # the "Other file or folder..." entry
NOT_PUBLISHED = "not published"


class Choice(NamedTuple):
    value: str  # what the server is started with (``connection.model_spec`` takes it)
    label: str  # the list's text
    details: str  # the entry's tooltip: size, licence, GPU memory, what it serves


def size_text(size: int | None) -> str:
    if not size:
        return "size not published"
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{max(1, round(size / 1e6))} MB"


def row_details(row: dict) -> str:
    """The weight manager's facts about one manifest entry, one per line."""
    serves = ", ".join(row.get("serves") or []) or "not listed in the manifest"
    state = "installed" if row["installed"] else f"download: {size_text(row.get('size'))}"
    return "\n".join([f"{row['name']} ({state})", f"Licence: {row.get('license') or NOT_PUBLISHED}",
                      f"GPU memory: {row.get('gpu_memory') or NOT_PUBLISHED}", f"Serves: {serves}"])


def spec_details(spec: str) -> str:
    """``factory.describe``'s account of a spec (no weights read); the reason when it cannot say."""
    from medvlsam2.capabilities import ACTIONS
    from medvlsam2.factory import describe

    try:
        info = describe(spec)
    except MedVLSAM2Error as exc:
        return str(exc)
    serves = "; ".join(ACTIONS[c] for c in sorted(info.capabilities) if c in ACTIONS) or "nothing"
    return f"{info.description}\nWeights: {info.provenance}\nServes: {serves}"


def choices() -> list[Choice]:
    """The demo bundle, manifest weights (installed first; the rest as downloads), random configs, "Other..."."""
    from medvlsam2 import weights

    out = [Choice("demo", "Demo bundle (trained on phantoms)", spec_details("demo"))] if demo_weights() else []
    try:
        rows = weights.list_weights()
    except Exception as exc:  # a broken manifest must not break the panel
        logging.warning("MedVLSAM2: cannot read the weights manifest: %s", exc)
        rows = []
    for row in sorted(rows, key=lambda r: not r["installed"]):
        name = row["name"]
        label = name if row["installed"] else f"{name} (download{', ' + size_text(row['size']) if row.get('size') else ''})"
        out.append(Choice(name, label, row_details(row)))
    out += [Choice(name, f"{name} (random weights)", spec_details(name)) for name in NAMED_CONFIGS]
    return out + [Choice(OTHER, "Other file or folder...", "A SAM2.1/MedSAM2 checkpoint, a recipe .yaml or a model folder")]
