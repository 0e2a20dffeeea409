"""Write the Sample Data entry's files: a synthetic abdominal CT phantom with findings (two liver lesions,
a left renal cyst), its label map as a Slicer segmentation, a thumbnail, and their sha256 for
MedVLSAM2SlicerLib/sample_data.py. Deterministic: the same seed writes the same bytes.

    python scripts/make_sample_data.py [FOLDER]     (default: the module's Resources/SampleData)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MedVLSAM2Slicer"))

from MedVLSAM2SlicerLib import sample_data  # noqa: E402
from medvlsam2.data.synthetic import generate_case  # noqa: E402
from medvlsam2.io.volume import write_mask  # noqa: E402

SEED = 11
FINDINGS = {"liver_lesions": [24.0, 14.0], "renal_cyst": "left", "cyst_mm": 18.0, "splenomegaly": False}


def main(folder: Path = sample_data.FOLDER) -> int:
    import SimpleITK as sitk
    from PIL import Image

    case = generate_case(SEED, findings=FINDINGS)
    folder.mkdir(parents=True, exist_ok=True)
    ct, seg, thumb = (folder / name for name in (sample_data.CT_FILE, sample_data.SEG_FILE, sample_data.THUMBNAIL))
    sitk.WriteImage(case.volume.to_sitk(), str(ct), useCompression=True)
    write_mask(case.labels, case.volume, seg, case.label_names)
    k = int(np.argmax((case.labels == 8).sum(axis=(1, 2))))  # the slice with the most lesion voxels
    window = np.clip((case.volume.array[k].astype(np.float32) + 160) / 400, 0, 1)  # abdomen window W400 L40
    Image.fromarray((window[::-1] * 255).astype(np.uint8)).resize((128, 128)).save(thumb)
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (ct, seg)}
    (folder / sample_data.CHECKSUMS).write_text(json.dumps(digests, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {ct.name} ({ct.stat().st_size // 1024} KB), {seg.name}, {thumb.name}; segments: "
          f"{', '.join(case.label_names.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else sample_data.FOLDER))
