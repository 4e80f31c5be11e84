#!/usr/bin/env bash
# Everything a GPU session should measure, in one device call (see docs/benchmarks.md):
#   device run: command "bash benchmarks/gpu_session.sh", carry [".whl"], timeout_s 600
# Installs the carried wheels (benchmarks/fetch_gpu_wheels.sh), then runs the GPU tests and the
# benchmarks at their GPU defaults, each under its own time limit, writing every log to $OUT
# (or ./gpu_logs). The figures go to docs/benchmarks.md with the date, device and command.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_logs}; mkdir -p "$OUT"; export OUT   # the benchmarks write their PNGs to $OUT
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1
step() {   # step NAME SECONDS COMMAND...
  local name=$1 secs=$2; shift 2
  echo "== $name ($(date -u +%FT%TZ), limit ${secs}s): $*" | tee -a "$OUT/summary.txt"
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1; echo "   exit $?" | tee -a "$OUT/summary.txt"
  tail -n 3 "$OUT/$name.log" | sed 's/^/   /' >> "$OUT/summary.txt"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/device.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$OUT/device.txt" 2>&1
# Triton kernels on the GPU (xdist: the JIT compilations run in parallel on the 16 cores)
step gpu_tests 120 python3 -m pytest -q -m gpu -k "not fused_cuda" -n 8 --timeout 110 -p no:cacheprovider
step bench_delta 80 python3 benchmarks/bench_delta.py --device cuda --T 1024,4096,16384
# at B·H = 128 (the static model's shape): the fused strategy is the default there on an H100
# (fused.suits), the chunked one beside it decides whether that rule holds
step bench_gated_linear 70 python3 benchmarks/bench_gated_linear.py --device cuda --strategies chunked,fused --BH 128 --T 1024,4096,16384
step bench_attention 60 python3 benchmarks/bench_attention.py --device cuda
step bench_lti 40 python3 benchmarks/bench_lti.py
step bench_rnn 40 python3 benchmarks/bench_rnn.py
step tune_gla_timed 45 python3 -m mixir.cli tune gla --gpu h100 --time --db "$OUT/db" --plot "$OUT/tune_gla.png"
# the generated CUDA C (load_inline builds, ~45 s each, in parallel): forward and training
step gpu_cuda_c_tests 110 python3 -m pytest -q -m gpu -k fused_cuda -n 8 --timeout 100 -p no:cacheprovider
# Mamba-1's default strategy (a vector state: recurrent at any length) against chunked, at a
# Mamba-1 shape (channels as heads, N = 16); last, so that a slow step before it costs only this
step bench_mamba_strategies 25 python3 benchmarks/bench_gated_linear.py --device cuda --mixers mamba --strategies recurrent,chunked --T 1024,4096 --B 4 --H 1024 --K 16 --no-baselines
cat "$OUT/summary.txt"
