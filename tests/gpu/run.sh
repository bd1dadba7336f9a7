#!/bin/sh
# make test-gpu: runs every GPU test binary; when one of them found a usable device, the GPU
# shell suites (focusd serving on the GPU) and the op test again under compute-sanitizer's
# memcheck and then its racecheck (shared-memory hazards), each a short run over every CUDA op.
# Each binary prints SKIP and passes nothing without a device, so a run on a machine without one
# claims nothing. Usage: tests/gpu/run.sh BUILD_DIR
set -u
BUILD=${1:-build}
status=0
ran=0
for t in "$BUILD"/tests-gpu/test_*; do
    [ -x "$t" ] || continue
    out=$("$t") || status=1
    printf '%s\n' "$out"
    printf '%s\n' "$out" | grep -q '^SKIP' || ran=1
done
if [ "$ran" -eq 0 ]; then
    echo "test-gpu: no usable CUDA device: nothing was checked"
    exit "$status"
fi
# Not named test_*.sh: tests/run, which runs the CPU suites, must not pick it up.
tests/gpu/daemon_gpu.sh "$BUILD" || status=1
sanitizer=$(command -v compute-sanitizer || true)
for d in "${CUDA_HOME:-}" /usr/local/cuda; do
    [ -z "$sanitizer" ] && [ -n "$d" ] && [ -x "$d/bin/compute-sanitizer" ] && sanitizer=$d/bin/compute-sanitizer
done
if [ -z "$sanitizer" ]; then
    echo "test-gpu: compute-sanitizer not found: the memcheck and racecheck runs were skipped"
    exit 1
fi
for tool in "memcheck --leak-check full" racecheck; do
    echo "test-gpu: compute-sanitizer --tool $tool on test_cuda_ops"
    # shellcheck disable=SC2086 # tool holds the tool's options
    # --quick: without the full-size attention gradient, which takes minutes under the tools
    "$sanitizer" --tool $tool --error-exitcode 3 "$BUILD/tests-gpu/test_cuda_ops" --quick || {
        echo "test-gpu: compute-sanitizer ${tool%% *} failed"
        status=1
    }
done
exit "$status"
