#!/bin/sh
# The GPU benchmark in one command: the engine on the CUDA backend (build/bench/bench_gpu) and
# diffusers' StableDiffusion3Pipeline in BF16 (tools/bench_gpu_baseline.py) on the same
# full-size random-weight model, then the ratios ours / diffusers with the card's name.
#
#   tools/bench-gpu.sh [all]    on the GPU machine: model, ours, diffusers, ratios
#   tools/bench-gpu.sh model|ours|diffusers|ratios    one part (a part fits a 10-minute slot)
#   tools/bench-gpu.sh cuda-libs                       the folders holding CUDA's libraries
#
# A GPU machine without this project's libraries or network runs it through tools/gpu-check.sh,
# which carries bench_gpu and the baseline's wheels there.
# Environment: BUILD (build), BENCH_MODEL ($BUILD/bench-model, made by tools/make_bench_model.py
# when missing), BENCH_GPU_OUT ($BUILD/bench-gpu: ours.txt, diffusers.txt, ratios.txt),
# BENCH_GPU_WHEELS (.gpucheck/wheels: wheels installed for the baseline when that folder exists),
# BENCH_GPU_PEAK (the card's dense BF16 TFLOP/s; default from the table below by nvidia-smi's
# name), BENCH_GPU_ARGS (options both sides take: --sizes --repeats --runs --steps --jobs).
# tests/gpu/README.md has the whole sequence. Not a test: it passes nothing and fails nothing.
set -eu

BUILD=${BUILD:-build}
BENCH_MODEL=${BENCH_MODEL:-$BUILD/bench-model}
OUTDIR=${BENCH_GPU_OUT:-$BUILD/bench-gpu}
ARGS=${BENCH_GPU_ARGS:-}
WHEELS=${BENCH_GPU_WHEELS:-.gpucheck/wheels}
PYSITE=$BUILD/bench-gpu-py
PYTHON=${PYTHON:-python3}

card_name() {
    nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1
}

# Dense (not sparse) BF16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s.
card_peak() {
    case "$1" in
    *H200* | *"H100 80GB HBM3"* | *"H100 SXM"*) echo 989 ;;
    *"H100 PCIe"*) echo 756 ;;
    *A100*) echo 312 ;;
    *) echo "" ;;
    esac
}

# CUDA's libraries: the toolkit's, else the ones PyTorch's wheels bring.
cuda_libs() {
    find "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64 /usr/local/cuda/targets /opt \
        /usr/local/lib \( -name 'libcublasLt.so.*' -o -name 'libcudart.so.*' \) -printf '%h\n' \
        2>/dev/null | sort -u | paste -sd: -
}

model() {
    [ -f "$BENCH_MODEL/model_index.json" ] && return
    echo "writing the bench model to $BENCH_MODEL (16 GB of random weights in the published layout and dtypes)"
    $PYTHON tools/make_bench_model.py "$BENCH_MODEL"
}

ours() {
    model
    bin=$BUILD/bench/bench_gpu
    [ -x "$bin" ] && ldd "$bin" | grep -q libcudart || {
        echo "bench-gpu: $bin is missing or was built without CUDA (nvcc not found by make)" >&2
        exit 1
    }
    libs=$(cuda_libs)
    name=$(card_name)
    peak=${BENCH_GPU_PEAK:-$(card_peak "$name")}
    mkdir -p "$OUTDIR"
    echo "card: ${name:-unknown (no nvidia-smi)}"
    # shellcheck disable=SC2086 # ARGS holds several options
    LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        "$bin" "$BENCH_MODEL" ${peak:+--peak "$peak"} $ARGS | tee "$OUTDIR/ours.txt"
}

diffusers() {
    model
    if [ -d "$WHEELS" ] && [ ! -d "$PYSITE/diffusers" ]; then
        $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$PYSITE" "$WHEELS"/*.whl
    fi
    mkdir -p "$OUTDIR"
    # shellcheck disable=SC2086
    PYTHONPATH="$PYSITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 \
        $PYTHON tools/bench_gpu_baseline.py "$BENCH_MODEL" $ARGS | tee "$OUTDIR/diffusers.txt"
}

# The figures both sides printed, side by side. Times: ours / diffusers above 1 means ours is
# slower; rates: below 1 means ours is slower. Diffusers' TFLOP/s comes from bench_gpu's count.
ratios() {
    name=$(card_name)
    peak=${BENCH_GPU_PEAK:-$(card_peak "$name")}
    {
        echo "card: ${name:-unknown (no nvidia-smi)}; dense BF16 peak: ${peak:-not known} TFLOP/s"
        echo "ours: float32 activations, TF32 off; diffusers: BF16, default attention (SDPA)"
        awk -v peak="${peak:-0}" '
            FNR == 1 { side++ }
            $1 == "BENCH" { v[side, $2] = $3; if (side == 1) keys[++n] = $2 }
            END {
                printf "%-28s %14s %14s %16s\n", "figure", "ours", "diffusers", "ours/diffusers"
                for (i = 1; i <= n; i++) {
                    k = keys[i]
                    if (!((2, k) in v)) continue
                    printf "%-28s %14.3f %14.3f %16.3f\n", k, v[1, k], v[2, k], v[1, k] / v[2, k]
                    if (k ~ /^step_ms_/) {
                        s = substr(k, 9); g = v[1, "step_gflop_" s]
                        a = g / v[1, k]; b = g / v[2, k]
                        printf "%-28s %14.2f %14.2f %16.3f\n", "step_tflops_" s, a, b, a / b
                        if (peak > 0)
                            printf "%-28s %13.1f%% %13.1f%%\n", "step_peak_percent_" s,
                                100 * a / peak, 100 * b / peak
                    }
                }
                print "times (ms, s): above 1 = ours slower; rates (TFLOP/s, images/s): below 1 = ours slower"
            }' "$OUTDIR/ours.txt" "$OUTDIR/diffusers.txt"
    } | tee "$OUTDIR/ratios.txt"
}

case "${1:-all}" in
cuda-libs) cuda_libs ;;
model) model ;;
ours) ours ;;
diffusers) diffusers ;;
ratios) ratios ;;
all)
    ours
    diffusers
    ratios
    ;;
*)
    echo "usage: $0 [all|model|ours|diffusers|ratios|cuda-libs]" >&2
    exit 2
    ;;
esac
