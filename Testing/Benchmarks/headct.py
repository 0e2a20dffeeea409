"""The benchmarks' real CT: the head CT of Debian's ``invesalius-examples`` package (GPL-2).

``ensure_head_ct()`` returns a NIfTI path, fetching the package with ``apt-get download`` on first
use (an explicit user action: the benchmark was asked for) and converting InVesalius' raw matrix.
``read_ct(path)`` reads a CT for the benchmarks: that head CT by default, or a ``.npz`` (``hu`` [k, j, i],
``spacing`` x, y, z), the form ``scripts/gpu_prepare.sh`` writes for the GPU machine, which has no SimpleITK.
"""

from __future__ import annotations

import glob
import plistlib
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"


def ensure_head_ct(dest: Path = DATA_DIR / "head_ct.nii.gz") -> Path:
    if dest.exists():
        return dest
    from medvlsam2.io.volume import Volume

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", "invesalius-examples"], cwd=tmp, check=True, capture_output=True)
        deb = next(Path(tmp).glob("invesalius-examples_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), f"{tmp}/x"], check=True)
        inv3 = next(Path(tmp, "x").rglob("Cranium.inv3"))
        with tarfile.open(inv3) as tar:
            tar.extractall(f"{tmp}/c", filter="data")
        folder = Path(glob.glob(f"{tmp}/c/*/main.plist")[0]).parent
        meta = plistlib.loads((folder / "main.plist").read_bytes())
        shape = tuple(meta["matrix"]["shape"])  # (z, y, x)
        array = np.fromfile(folder / meta["matrix"]["filename"], dtype=meta["matrix"]["dtype"]).reshape(shape)
        import SimpleITK as sitk

        sitk.WriteImage(Volume(array, tuple(meta["spacing"])).to_sitk(), str(dest), useCompression=True)
    return dest


def read_ct(path: str | Path | None = None):
    """A ``Volume`` from ``path`` (any format ``read_volume`` reads, or ``.npz``); default: the head CT."""
    from medvlsam2.io.volume import Volume, read_volume

    path = Path(path) if path else ensure_head_ct()
    if path.suffix == ".npz":
        with np.load(path) as data:
            return Volume(data["hu"], tuple(float(v) for v in data["spacing"]))
    return read_volume(path)


if __name__ == "__main__":
    print(ensure_head_ct())
