#!/bin/sh
# The GPU benchmark in one command: the engine on the CUDA backend (build/bench/bench_gpu) and
# diffusers' StableDiffusion3Pipeline in BF16 (tools/bench_gpu_baseline.py) on the same
# full-size random-weight model, then the ratios ours / diffusers with the card's name.
#
#   tools/bench-gpu.sh pack     on the build machine (network): downloads the Python wheels the
#                               baseline needs and packs build/bench/bench_gpu with the shared
#                               libraries it needs beyond glibc and CUDA into .benchgpu/
#   tools/bench-gpu.sh [all]    on the GPU machine: model, ours, diffusers, ratios
#   tools/bench-gpu.sh model|ours|diffusers|ratios    one part (a part fits a 10-minute slot)
#
# Environment: BUILD (build), BENCH_MODEL ($BUILD/bench-model, made by tools/make_bench_model.py
# when missing), BENCH_GPU_OUT ($BUILD/bench-gpu: ours.txt, diffusers.txt, ratios.txt),
# BENCH_GPU_PEAK (the card's dense BF16 TFLOP/s; default from the table below by nvidia-smi's
# name), BENCH_GPU_ARGS (options both sides take: --sizes --repeats --runs --steps --jobs).
# tests/gpu/README.md has the whole sequence. Not a test: it passes nothing and fails nothing.
set -eu

BUILD=${BUILD:-build}
BENCH_MODEL=${BENCH_MODEL:-$BUILD/bench-model}
OUTDIR=${BENCH_GPU_OUT:-$BUILD/bench-gpu}
ARGS=${BENCH_GPU_ARGS:-}
PACK=.benchgpu
PYSITE=$BUILD/bench-gpu-py
PYTHON=${PYTHON:-python3}
# The baseline's versions: the reference of the spec. The GPU image's own transformers and
# huggingface_hub are newer majors that diffusers 0.31.0 does not support.
WHEELS="diffusers==0.31.0 transformers==4.46.3 tokenizers==0.20.3 huggingface_hub==0.26.2"
WHEEL_PYTHON=${WHEEL_PYTHON:-3.12}

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

pack() {
    bin=$BUILD/bench/bench_gpu
    [ -x "$bin" ] || { echo "bench-gpu: $bin is missing: run make first" >&2; exit 1; }
    ldd "$bin" | grep -q libcudart || {
        echo "bench-gpu: $bin was built without CUDA (nvcc not found by the Makefile)" >&2
        exit 1
    }
    rm -rf "$PACK"
    mkdir -p "$PACK/wheels" "$PACK/stage/bin" "$PACK/stage/lib"
    # glibc, the C++ runtime, zlib and CUDA are the GPU machine's own.
    skip='^(linux-vdso|ld-linux|libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|libz|libcuda|libcudart|libcublas|libcublasLt)\.so'
    cp "$bin" "$PACK/stage/bin/"
    ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r name path; do
        echo "$name" | grep -Eq "$skip" || cp -L "$path" "$PACK/stage/lib/$name"
    done
    tar -C "$PACK/stage" -czf "$PACK/bench_gpu.tgz" bin lib
    rm -rf "$PACK/stage"
    # shellcheck disable=SC2086 # WHEELS is a list
    $PYTHON -m pip download -q --no-deps --only-binary=:all: --python-version "$WHEEL_PYTHON" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$PACK/wheels" $WHEELS
    du -sh "$PACK"
    echo "carry $PACK to the GPU machine (tests/gpu/README.md)"
}

# The bench_gpu to run: the one built here, else the packed one with its libraries.
ours_bin() {
    if [ -x "$BUILD/bench/bench_gpu" ] && ldd "$BUILD/bench/bench_gpu" | grep -q libcudart; then
        echo "$BUILD/bench/bench_gpu"
        return
    fi
    [ -f "$PACK/bench_gpu.tgz" ] || {
        echo "bench-gpu: no CUDA build of bench_gpu: run make with nvcc, or carry $PACK" >&2
        exit 1
    }
    mkdir -p "$BUILD/bench-gpu-pack"
    tar -C "$BUILD/bench-gpu-pack" -xzf "$PACK/bench_gpu.tgz"
    echo "$BUILD/bench-gpu-pack/bin/bench_gpu"
}

model() {
    [ -f "$BENCH_MODEL/model_index.json" ] && return
    echo "writing the bench model to $BENCH_MODEL (16 GB of random weights in the published layout and dtypes)"
    $PYTHON tools/make_bench_model.py "$BENCH_MODEL"
}

ours() {
    model
    bin=$(ours_bin) || exit 1
    libs=$(dirname "$bin")/../lib
    # CUDA's libraries: the toolkit's, else the ones PyTorch's wheels bring.
    for d in $(find /usr/local/cuda/lib64 /usr/local/cuda/targets /opt /usr/local/lib \
        \( -name 'libcublasLt.so.*' -o -name 'libcudart.so.*' \) -printf '%h\n' 2>/dev/null |
        sort -u); do
        libs="$libs:$d"
    done
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
    if [ -d "$PACK/wheels" ] && [ ! -d "$PYSITE/diffusers" ]; then
        $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$PYSITE" "$PACK"/wheels/*.whl
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
pack) pack ;;
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
    echo "usage: $0 [pack|all|model|ours|diffusers|ratios]" >&2
    exit 2
    ;;
esac
