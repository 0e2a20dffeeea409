#!/usr/bin/env bash
# Run HERE (not on the GPU machine) once before the device checks: puts into .whl/ the pure-Python wheels the
# engine needs that the GPU machine's image lacks (sam2 and its hydra/omegaconf/iopath, monai), and writes the
# head CT as Testing/Benchmarks/data/head_ct.npz (that machine has no SimpleITK). Both paths are git-ignored;
# name them in the device call's `carry` and run scripts/gpu_checks.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
mkdir -p .whl
rm -f .whl/*.whl
SAM2_BUILD_CUDA=0 python -m pip wheel -q --no-deps --no-build-isolation -w .whl "sam2==$(python -c 'import importlib.metadata as m; print(m.version("sam2"))')"
for pkg in hydra-core omegaconf antlr4-python3-runtime iopath monai; do
  python -m pip wheel -q --no-deps -w .whl "$pkg==$(python -c "import importlib.metadata as m; print(m.version('$pkg'))")"
done
PYTHONPATH=MedVLSAM2Slicer:Testing/Benchmarks python - <<'PY'
import numpy as np
from headct import DATA_DIR, read_ct
v = read_ct()
np.savez_compressed(DATA_DIR / "head_ct.npz", hu=v.array, spacing=np.asarray(v.spacing))
print("wrote", DATA_DIR / "head_ct.npz", v.shape)
PY
du -ch .whl/*.whl Testing/Benchmarks/data/head_ct.npz | tail -n 1
