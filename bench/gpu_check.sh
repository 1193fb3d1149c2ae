#!/usr/bin/env bash
# One prepared check for a lent CUDA machine (run from the repository root):
#   bash bench/gpu_check.sh            # writes logs and JSON under ${OUT:-bench/results/gpu}
# 1. Python: the system torch when it sees a GPU (a venv with --system-site-packages on top), else a
#    fresh venv with torch from wheels/ (the machine has no network: bring wheels).
# 2. Kernels: mamba-ssm + causal-conv1d from carried wheels in wheels/ when present, else
#    `pip install mamba-ssm causal-conv1d --no-build-isolation` with TORCH_CUDA_ARCH_LIST=9.0 (timed; needs
#    a reachable package index, so it fails fast on an offline machine and the kernel tests then skip).
# 3. `pytest -m gpu tests/ops tests/models` (ours on CUDA vs reference; kernels vs reference; every backbone
#    on CUDA vs CPU; our Mamba-3 layer vs mamba-ssm's on identical weights), serving on CUDA vs the CPU
#    (tests/serve/test_device.py, when the serving dependencies import) and
#    `bench/scan.py --gpu` at L=2048, 8192 (kernel vs chunked vs reference), then a short table.
set -uo pipefail
cd "$(dirname "$0")/.."
RES="${OUT:-bench/results/gpu}"
mkdir -p "$RES"
LOG="$RES/gpu_check.log"
exec > >(tee "$LOG") 2>&1
t0=$(date +%s)
say() { printf '\n== %s (+%ss)\n' "$*" "$(( $(date +%s) - t0 ))"; }

say "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi missing"
PY=python3
command -v "$PY" >/dev/null || { echo "no python3 on PATH"; exit 2; }

say "python environment"
VENV="${EHRFM_GPU_VENV:-/tmp/ehrfm-gpu-venv}"  # outside the repo: nothing to ignore or commit
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "system torch sees a GPU: $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)')"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV"
else
  echo "system python has no CUDA torch; creating $VENV and installing torch from wheels/"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  ls wheels/torch-*.whl >/dev/null 2>&1 && "$VENV/bin/pip" install -q --no-index --find-links wheels torch
fi
VPY="$VENV/bin/python"
"$VPY" -c "import torch; assert torch.cuda.is_available(), 'torch cannot see the GPU'; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" || exit 3
# test/bench helpers that may be missing from a bare image (offline: from wheels/ only)
for mod in pytest psutil numpy; do
  "$VPY" -c "import $mod" 2>/dev/null || "$VENV/bin/pip" install -q --no-index --find-links wheels "$mod" \
    || "$VENV/bin/pip" install -q "$mod" || echo "WARNING: $mod unavailable"
done

say "CUDA kernels (mamba-ssm, causal-conv1d)"
if "$VPY" -c "import mamba_ssm, causal_conv1d" 2>/dev/null; then
  echo "already importable"
elif ls wheels/mamba_ssm-*.whl >/dev/null 2>&1; then
  tb=$(date +%s)
  "$VENV/bin/pip" install -q --no-index --find-links wheels --no-deps wheels/causal_conv1d-*.whl wheels/mamba_ssm-*.whl
  "$VENV/bin/pip" install -q --no-index --find-links wheels einops 2>/dev/null || true
  echo "installed from wheels/ in $(( $(date +%s) - tb )) s"
else
  tb=$(date +%s)
  TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS=16 timeout 1500 "$VENV/bin/pip" install --no-build-isolation \
    causal-conv1d mamba-ssm 2>&1 | tail -5
  echo "source build attempt took $(( $(date +%s) - tb )) s"
fi
"$VPY" - <<'PY'
for mod in ("mamba_ssm.ops.selective_scan_interface", "mamba_ssm.ops.triton.ssd_combined", "causal_conv1d"):
    try:
        __import__(mod)
        print("import ok:", mod)
    except Exception as exc:  # the GPU tests then skip the kernel comparisons
        print("import FAILED:", mod, type(exc).__name__, exc)
PY

say "pytest -m gpu tests/ops tests/models"
PYTHONPATH=. "$VPY" -m pytest -m gpu tests/ops tests/models -q -rs -p no:cacheprovider 2>&1 | tail -25
PYTEST_RC=${PIPESTATUS[0]}

say "pytest -m gpu tests/serve/test_device.py (serving on CUDA vs CPU; needs ehrfm's serving dependencies)"
if "$VPY" -c "import mlflow, fhir.resources, orjson, polars, yaml" 2>/dev/null; then
  PYTHONPATH=. "$VPY" -m pytest -m gpu tests/serve/test_device.py -q -rs -p no:cacheprovider 2>&1 | tail -10
  SERVE_RC=${PIPESTATUS[0]}
else
  echo "not run: mlflow / fhir.resources / orjson / polars / pyyaml not importable (carry their wheels in wheels/)"
  SERVE_RC=0
fi

say "bench/scan.py --gpu (L = 2048, 8192)"
PYTHONPATH=. "$VPY" bench/scan.py --gpu --lengths 2048 8192 --repeats 5 --ref-max-len 2048 \
  --out "$RES/scan_gpu.json" 2>&1 | grep -v Warning | tail -40
BENCH_RC=${PIPESTATUS[0]}

say "summary"
"$VPY" - "$RES/scan_gpu.json" <<'PY'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
except Exception as exc:
    sys.exit(f"no bench results: {exc}")
print(f"{'op':<15}{'impl':<9}{'L':>6} {'mode':<8}{'ms':>10}{'rel err':>10}{'x floor':>9}")
for r in rows:
    if r.get("status") == "ok":
        print(f"{r['op']:<15}{r['impl']:<9}{r['L']:>6} {r['mode']:<8}{r['seconds'] * 1e3:>10.2f}"
              f"{r['rel_err']:>10.1e}{r['x_floor']:>9.1f}")
    else:
        print(f"{r['op']:<15}{r['impl']:<9}{r['L']:>6} {r['mode']:<8}{r.get('status'):>10}")
PY
echo "pytest rc=$PYTEST_RC serve rc=$SERVE_RC bench rc=$BENCH_RC total $(( $(date +%s) - t0 )) s; log: $LOG"
exit $(( PYTEST_RC != 0 || SERVE_RC != 0 || BENCH_RC != 0 ))
