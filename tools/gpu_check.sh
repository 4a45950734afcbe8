#!/usr/bin/env bash
# The prepared GPU smoke test (issue 16): one command for the device machine, done in <= 10 minutes.
#
#   tools/gpu_check.sh --gather-wheels          # here (has PyPI): the wheels the device lacks -> .gpu-wheels/
#   tools/gpu_check.sh --device cuda            # there: install them offline, then run tools/gpu_check.py
#   tools/gpu_check.sh --device cpu --quick     # anywhere: the small CPU run make test calls (tests/test_gpu_check.py)
#
# The device machine (Python 3.12, torch 2.11, transformers 5.17, no network) lacks papermill, nbclient,
# ipykernel, ipywidgets, av, soundfile and jsonschema. --gather-wheels downloads them with their
# dependencies for CPython 3.12 manylinux x86_64 and drops the wheels of packages that machine already
# has (its list: /work/.library/device/KINDS.md), keeping the folder well under the 64 MiB that travels.
# On the device: a venv over the system site-packages (its torch stays), the wheels installed with
# --no-index, emolens itself with --no-deps, then tools/gpu_check.py writes $OUT/gpu_check.json
# (or runs/gpu_check/summary.json).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.gpu-wheels
DEVICE=cuda
QUICK=
OUTFILE="${OUT:-runs/gpu_check}/gpu_check.json"
PY="${PYTHON:-}"
NEEDED="papermill nbclient nbformat ipykernel ipywidgets av soundfile jsonschema"
# on the device image already (KINDS.md); their wheels are not carried
HAVE="accelerate attrs certifi charset-normalizer click contourpy cycler filelock fonttools fsspec hf-xet huggingface-hub
idna jinja2 joblib kiwisolver markupsafe matplotlib mpmath networkx numpy packaging pandas pillow platformdirs psutil
pygments pyparsing python-dateutil pyyaml regex requests safetensors scikit-learn scipy seaborn setuptools six sympy
threadpoolctl tokenizers torch tqdm transformers typing-extensions tzdata urllib3 wheel"

while [ $# -gt 0 ]; do
  case "$1" in
    --gather-wheels)
      rm -rf "$WHEELS"; mkdir -p "$WHEELS"
      ${PY:-python3} -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_5_x86_64 -d "$WHEELS" $NEEDED
      for w in "$WHEELS"/*.whl; do
        n=$(basename "$w" | cut -d- -f1 | tr '_A-Z' '-a-z')
        for h in $HAVE; do [ "$n" = "$h" ] && rm -f "$w"; done
      done
      ls "$WHEELS" | wc -l | xargs echo "wheels:"
      du -sb "$WHEELS" | awk '{printf "size: %.1f MiB\n", $1 / 1048576}'
      exit 0 ;;
    --device) DEVICE="$2"; shift ;;
    --quick) QUICK=--quick ;;
    --out) OUTFILE="$2"; shift ;;
    *) echo "gpu_check.sh: unknown option $1; use --gather-wheels | --device cuda|cpu [--quick] [--out FILE]" >&2; exit 2 ;;
  esac
  shift
done

if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then   # a development checkout (make setup): everything is installed
    PY=.venv/bin/python
  elif [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    # the device machine (.venv is not carried): install what it lacks, offline, next to its torch/transformers
    python3 -m venv --system-site-packages /tmp/gpu-check-venv
    PY=/tmp/gpu-check-venv/bin/python
    $PY -m pip install -q --no-index --find-links "$WHEELS" $NEEDED
    $PY -m pip install -q --no-index --no-deps --no-build-isolation -e .
    $PY -m ipykernel install --sys-prefix --name python3 >/dev/null
  else
    PY=python3
  fi
fi
export PYTHONUNBUFFERED=1
exec timeout 590 $PY tools/gpu_check.py --device "$DEVICE" $QUICK --out "$OUTFILE"
