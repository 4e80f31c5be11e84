#!/usr/bin/env bash
# Download the wheels a GPU session needs beside the GPU machine's own packages (Python 3.12,
# torch 2.11, triton 3.6; no package registry there): ortools for the tuner, fla-core 0.6 for the
# fla baselines, flashrnn for the RNN baseline (if published). Run here, in the repository root; the
# wheels land in .whl/ (ignored by git), which a device run carries (carry: [".whl"]).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
get() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$@"
}
get ortools immutabledict
python3 -m pip download -q --no-deps -d .whl fla-core==0.6.0 flash-linear-attention==0.6.0
python3 -m pip download -q --no-deps -d .whl flashrnn || echo "flashrnn: no wheel (its baseline is skipped)"
ls -la .whl
