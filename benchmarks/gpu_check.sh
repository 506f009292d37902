#!/usr/bin/env bash
# The GPU check of issue 15: one short script (about 6 minutes on one H100, at most 8) for the next
# session with a CUDA device. Run from the repository root:
#
#     bash benchmarks/gpu_check.sh            # results in $OUT (default runs/gpu-check)
#
# It installs nothing from the network. mtlframe is imported from this checkout (PYTHONPATH); the
# device's python3 must hold torch (CUDA), pytorch-lightning, torchmetrics, pandas, pyarrow, pluggy,
# pyyaml, rich and pydantic. A package it lacks can come as wheels in .whl/ (or $MTLFRAME_WHEELS),
# made on a machine with network access, e.g. for Python 3.12:
#     pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_17_x86_64 -d .whl pydantic==2.14.4 pydantic-core==2.50.5 \
#         annotated-types==0.8.0 typing-inspection==0.4.5
# they are installed with --no-index into /tmp/mtlframe-site.
#
# Steps (each with its own time limit; a step that fails or runs out of time is reported and the
# next one runs):
#   1. environment: nvidia-smi, torch / CUDA / package versions            -> log.txt
#   2. host syncs per training step, counted by mtlframe's counter and by
#      torch.cuda.set_sync_debug_mode("warn") (benchmarks.host_syncs)       -> host_syncs.json
#   3. the GPU section of the harness: Adult and 10M synthetic rows at batch
#      1024/8192/65536, mtlframe vs the reference loop; Adult at 1024 also
#      with trainer.compile {mode: reduce-overhead} (benchmarks.gpu)  -> adult/, synthetic/ gpu.json, gpu.md
#   4. TorchRec sharded vs dense (benchmarks/torchrec_encoder.py), when the
#      file and torchrec are present                                        -> torchrec.json
#   5. 2-process DDP smoke run (NCCL) with the host-sync count, when there
#      are 2 GPUs                                                           -> ddp.rank0.json, ddp.rank1.json
# and log.txt (everything printed) and summary.txt (one line a step).
set -u
cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:-runs/gpu-check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
exec > >(tee -a "$OUT/log.txt") 2>&1
START=$(date +%s)
summary() { echo "$1" | tee -a "$OUT/summary.txt"; }
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    local t0=$(date +%s)
    echo "=== $name (limit ${limit}s, $(( t0 - START ))s into the check)"
    timeout --signal=INT --kill-after=20 "$limit" "$@"
    local rc=$?
    local took=$(( $(date +%s) - t0 ))
    if [ $rc -eq 0 ]; then summary "$name: ok (${took}s)"
    elif [ $rc -eq 124 ]; then summary "$name: TIMED OUT after ${limit}s (partial results kept)"
    else summary "$name: FAILED (exit $rc, ${took}s; see log.txt)"; fi
}

# 1. environment (and the wheels of missing packages)
WHEELS="${MTLFRAME_WHEELS:-.whl}"
ENVTXT=/tmp/mtlframe-gpu-check-env.txt   # (into log.txt: $OUT brings back at most 8 files)
if ! "$PY" -c "import pydantic, pluggy, yaml, rich, pandas, pytorch_lightning, torchmetrics" 2>/dev/null; then
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/mtlframe-site "$WHEELS"/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/mtlframe-site"
    fi
fi
{
    date -u; nvidia-smi 2>&1 | head -20
    "$PY" - <<'PYEOF'
import importlib, sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    print("device", i, torch.cuda.get_device_name(i))
for name in ("pytorch_lightning", "torchmetrics", "pydantic", "pandas", "pyarrow", "numpy", "torchrec", "fbgemm_gpu"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:  # noqa: BLE001
        print(name, "MISSING:", type(exc).__name__, str(exc)[:200])
PYEOF
} > "$ENVTXT" 2>&1
cat "$ENVTXT"
if ! "$PY" -c "import mtlframe.run"; then   # its error goes to log.txt
    summary "environment: mtlframe does not import with $PY (see log.txt: a missing package? bring its wheels in $WHEELS)"
    exit 1
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    summary "environment: no CUDA device visible to $PY; nothing to measure"
    exit 1
fi
summary "environment: ok ($(grep -m1 '^device 0' "$ENVTXT"))"
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")

# 2. host syncs per training step on the GPU (the counter, and CUDA's own sync debug mode)
step host_syncs 60 "$PY" -m benchmarks.host_syncs --accelerator gpu --output "$OUT/host_syncs.json"

# 3. the GPU section (writes gpu.json / gpu.md after every row), in two steps so that the
#    10M-row synthetic set (built once per batch size, ~45 s each) cannot eat Adult's time
step gpu_adult 120 "$PY" -m benchmarks.gpu --datasets adult --output "$OUT/adult" --compile reduce-overhead
step gpu_synthetic 240 "$PY" -m benchmarks.gpu --datasets synthetic --output "$OUT/synthetic"

# 4. TorchRec sharded vs dense, when present
if [ -f benchmarks/torchrec_encoder.py ] && "$PY" -c "import torchrec" 2>/dev/null; then
    step torchrec 60 "$PY" -m benchmarks.torchrec_encoder --steps 20 --warmup 3 --output "$OUT/torchrec.json"
else
    summary "torchrec: skipped ($( [ -f benchmarks/torchrec_encoder.py ] && echo 'torchrec is not importable' || echo 'benchmarks/torchrec_encoder.py is not in this checkout'))"
fi

# 5. DDP smoke run on 2 GPUs (NCCL), with the host-sync count of each process
if [ "$NGPU" -ge 2 ]; then
    step ddp 90 "$PY" -m benchmarks.host_syncs --accelerator gpu --devices 2 --output "$OUT/ddp"
else
    summary "ddp: skipped (1 GPU; a 2-process run needs 2)"
fi
summary "total: $(( $(date +%s) - START ))s"
