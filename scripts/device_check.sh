#!/usr/bin/env bash
# The prepared accelerator check (issue 39): run from the repository root on a machine with one GPU (or TPU) and
# chunklm's dependencies installed; about 6-8 minutes on an H100/H200. Writes its outputs under ${OUT:-runs/device}.
#   1. the compiled kernels (chunk ops and SSD) and fused attention vs the XLA references (pytest -m gpu / -m tpu);
#   2. the SSD op alone, XLA vs Pallas, forward and forward+backward (bench kernels --ops ssd);
#   3. whole training steps: hnet_1stage_S with auto (Pallas chunk ops, XLA SSD) vs pallas (Pallas SSD too), and the
#      byte Transformer S as the MFU baseline.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH=${PYTHONPATH:-.}
MARK=$("$PY" -c "import jax; print('tpu' if jax.default_backend() == 'tpu' else 'gpu')")
"$PY" -c "import jax; print(jax.__version__, jax.devices())" | tee "$OUT/device.txt"
timeout 240 "$PY" -m pytest -q -m "$MARK" tests/test_kernels_device.py tests/test_layers.py 2>&1 | tail -25 \
  | tee "$OUT/pytest.txt"
timeout 180 "$PY" -m chunklm bench kernels --ops ssd --impl xla,pallas --ssd-shapes full --dtype float32,bfloat16 \
  --no-step --repeats 10 --warmup 2 --json "$OUT/ssd.json" 2>&1 | tee "$OUT/ssd.txt"
for impl in auto pallas; do
  timeout 150 "$PY" -m chunklm bench train --config hnet_1stage_S --set kernels.impl=$impl --steps 5 --warmup 1 \
    --json "$OUT/hnet_1stage_S_$impl.json" 2>&1 | tail -12 | tee "$OUT/hnet_1stage_S_$impl.txt"
done
timeout 120 "$PY" -m chunklm bench train --config byte_transformer_S --steps 5 --warmup 1 \
  --json "$OUT/byte_transformer_S.json" 2>&1 | tail -12 | tee "$OUT/byte_transformer_S.txt"
