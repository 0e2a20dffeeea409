"""The module's Sample Data entry: a synthetic abdominal CT phantom with findings (two liver lesions and a
left renal cyst) and its reference segmentation, shipped with the extension (no download: the files are
read from the module's Resources through ``file://`` addresses, with their sha256 checked by Sample Data).

Registered when Slicer has started (the module file connects ``register`` to ``startupCompleted()``);
written by scripts/make_sample_data.py.
"""

from __future__ import annotations

import json
from pathlib import Path

FOLDER = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"
CT_FILE, SEG_FILE = "MedVLSAM2Phantom.nrrd", "MedVLSAM2Phantom.seg.nrrd"
THUMBNAIL, CHECKSUMS = "MedVLSAM2Phantom.png", "checksums.json"
CATEGORY, SAMPLE = "MedVLSAM2", "MedVLSAM2Phantom"


def source_arguments(folder: Path = FOLDER) -> dict:
    """Keyword arguments of ``SampleDataLogic.registerCustomSampleDataSource`` for the phantom."""
    digests = json.loads((folder / CHECKSUMS).read_text(encoding="utf-8"))
    files = [CT_FILE, SEG_FILE]
    return {"category": CATEGORY, "sampleName": SAMPLE, "thumbnailFileName": str(folder / THUMBNAIL),
            "uris": [(folder / f).as_uri() for f in files], "fileNames": files,
            "nodeNames": [SAMPLE, f"{SAMPLE} reference"], "checksums": [f"SHA256:{digests[f]}" for f in files],
            "loadFileTypes": ["VolumeFile", "SegmentationFile"]}


def register() -> None:
    """Add the phantom to Slicer's Sample Data module (a missing Sample Data module is not an error)."""
    try:
        import SampleData
    except ImportError:
        return
    SampleData.SampleDataLogic.registerCustomSampleDataSource(**source_arguments())
