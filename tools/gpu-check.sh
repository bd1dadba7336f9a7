#!/bin/sh
# The GPU path checked in one prepared run: everything is built on the build machine and carried
# to a GPU machine that has CUDA, PyTorch and a driver but neither this project's libraries nor
# network, where `make test-gpu` and then the parts of `make bench-gpu` run, each within a time
# budget, and one report file says what the card is, what passed or failed, and the figures.
#
#   tools/gpu-check.sh pack          here, after `make -j2` with nvcc on PATH, with network:
#                                    packs the CUDA programs with their shared libraries and
#                                    the baseline's wheels into .gpucheck/, checks that every
#                                    carried binary resolves its libraries from the pack, and
#                                    that the tree plus the pack stays under 64 MiB
#   tools/gpu-check.sh run OUTDIR    there, in a copy of the tree carrying .gpucheck: writes
#                                    OUTDIR/gpu-check-report.txt
#
# run's exit status: 0 every test passed and every stage ended within its budget; 1 a test
# failed, or a stage failed or ran out of time; 2 usage, or no pack; 3 no usable GPU was found:
# nothing was checked (the report says so; the benchmark is not started).
# Environment: GPU_CHECK_PACK (.gpucheck), GPU_CHECK_NO_WHEELS=1 (pack: no download, so the
# baseline cannot run; for tests/ops/test_gpu_check.sh), GPU_CHECK_BUILD (build/gpu-check: where
# run unpacks), BUDGET_UNPACK (20),
# BUDGET_TEST (240), BUDGET_MODEL (40), BUDGET_OURS (80), BUDGET_DIFFUSERS (80) in seconds:
# 470 s in all, inside 8 minutes; BENCH_GPU_ARGS (--runs 1 --repeats 3: one image per size).
# tests/gpu/README.md tells how to run it with the device tool and by hand.
set -u
cd "$(dirname "$0")/.." || exit 2

PACK=${GPU_CHECK_PACK:-.gpucheck}
LIMIT=$((64 * 1024 * 1024))
# The programs the GPU half runs, as paths under the build folder: make test-gpu's binaries
# (the Makefile's GPU_TEST_BIN), focusd and focus for its daemon suite, and bench_gpu.
PROGRAMS="$(for t in tests/gpu/test_*.c; do printf 'tests-gpu/%s ' "$(basename "$t" .c)"; done)focusd focus bench/bench_gpu"
# The baseline: a diffusers that runs on the GPU image's own transformers 5 and
# huggingface_hub 1 (0.42.1, the version make bench-cpu-peers pins), so that only diffusers and
# importlib_metadata, its one pure-Python need that the image lacks, travel.
WHEELS="diffusers==0.42.1 importlib_metadata==8.5.0"
WHEEL_PYTHON=3.12
# Libraries the GPU machine's own: glibc (which must match its loader), the C++ runtime (newer
# there) and CUDA's (the driver's version). Everything else ldd lists is carried.
SYSTEM_LIBS='^(linux-vdso|ld-linux-x86-64|libc|libm|libdl|librt|libpthread|libresolv|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libcublasLt)\.so'

die() {
    echo "gpu-check: $*" >&2
    exit 2
}

# The bytes the device tool carries: the tree git would copy (tracked and untracked files it
# does not ignore) plus the pack.
carried_bytes() {
    tree=$(git ls-files -z -co --exclude-standard | xargs -0 stat -c %s 2>/dev/null |
        awk '{ n += $1 } END { print n + 0 }')
    pack=$(find "$PACK" -type f -printf '%s\n' | awk '{ n += $1 } END { print n + 0 }')
    echo $((tree + pack))
}

# ldd of each file given: every library outside SYSTEM_LIBS must resolve into folder $1.
check_resolved() {
    libdir=$(cd "$1" && pwd -P)
    shift
    bad=0
    for f in "$@"; do
        ldd "$f" | awk '$2 == "=>" { print $1, $3 }' | while read -r name path; do
            echo "$name" | grep -Eq "$SYSTEM_LIBS" && continue
            case "$(realpath "$path")" in
            "$libdir"/*) ;;
            *) echo "gpu-check: $f: $name resolves to $path, not the pack" && exit 1 ;;
            esac
        done || bad=1
    done
    return "$bad"
}

pack() {
    build=${BUILD:-build}
    command -v patchelf >/dev/null || die "patchelf is missing (make deps installs it)"
    for p in $PROGRAMS; do
        [ -x "$build/$p" ] || die "$build/$p is missing: run make with nvcc on PATH first"
    done
    ldd "$build/focusd" | grep -q libcudart || die "$build/focusd was built without CUDA"
    targets="ptx_90 sm_80 sm_89 sm_90a"
    for p in $PROGRAMS; do
        ldd "$build/$p" | grep -q libcudart || continue # the client holds no GPU code
        t=$(python3 tools/fatbin_targets.py "$build/$p")
        [ "$t" = "$targets" ] || die "$build/$p holds GPU code for '$t', not '$targets' (CUDA_ARCHS)"
    done

    rm -rf "$PACK"
    stage=$PACK/stage
    mkdir -p "$stage/lib" "$PACK/wheels"
    for p in $PROGRAMS; do
        mkdir -p "$stage/$(dirname "$p")"
        # Without debug sections or local symbols: the device call's 64 MiB carries the tree too.
        strip --strip-unneeded -o "$stage/$p" "$build/$p"
        # DT_RPATH, not RUNPATH: it also serves the libraries' own dependencies.
        patchelf --force-rpath --set-rpath '$ORIGIN/lib:$ORIGIN/../lib' "$stage/$p"
        ldd "$build/$p" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }'
    done | sort -u | while read -r name path; do
        echo "$name" | grep -Eq "$SYSTEM_LIBS" || cp -L "$path" "$stage/lib/$name"
    done
    for l in "$stage"/lib/*; do
        patchelf --force-rpath --set-rpath '$ORIGIN' "$l"
    done
    # shellcheck disable=SC2086 # PROGRAMS is a list
    (cd "$stage" && check_resolved lib $PROGRAMS lib/*) || die "a carried binary needs a library outside the pack"
    glibc=$(for f in "$stage"/lib/* $(printf "$stage/%s " $PROGRAMS); do objdump -T "$f"; done |
        grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)
    {
        echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with changes)')"
        echo "packed $(date -u +%Y-%m-%dT%H:%MZ) on $(. /etc/os-release && echo "$PRETTY_NAME")"
        echo "nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'); GPU code $targets"
        echo "needs $glibc or later, the C++ runtime, CUDA $(nvcc --version | sed -n 's/.*release \([0-9]*\).*/\1/p') (libcudart, libcublas, libcublasLt)"
        echo "carried libraries: $(ls "$stage/lib" | paste -sd' ' -)"
    } >"$PACK/MANIFEST"
    # xz at its strongest: oneDNN, which holds kernels for every x86-64 generation, is 40 MB.
    tar -C "$stage" -cf - . | xz -T2 -9e >"$PACK/build.tar.xz"
    rm -rf "$stage"
    if [ "${GPU_CHECK_NO_WHEELS:-}" = 1 ]; then
        rmdir "$PACK/wheels"
    else
        # shellcheck disable=SC2086 # WHEELS is a list
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$WHEEL_PYTHON" \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 -d "$PACK/wheels" $WHEELS || die "pip download failed"
    fi
    cat "$PACK/MANIFEST"
    n=$(carried_bytes)
    echo "gpu-check: carried: $(du -sh "$PACK" | cut -f1) pack + tree = $((n / 1048576)) MiB of 64 MiB ($n bytes)"
    [ "$n" -lt "$LIMIT" ] || die "the tree and the pack exceed the 64 MiB a device call carries"
    echo "gpu-check: now carry $PACK: tools/gpu-check.sh run OUTDIR (tests/gpu/README.md)"
}

# stage NAME BUDGET CMD...: CMD with its output to stdout and $LOGS/NAME.log, killed (with its
# process group) after BUDGET seconds; one line per stage in $LOGS/stages.
stage() {
    name=$1 budget=$2
    shift 2
    echo "== $name (budget ${budget}s)" | tee "$LOGS/$name.log"
    t0=$(date +%s)
    { timeout -k 5 "$budget" "$@" 2>&1; echo $? >"$LOGS/$name.rc"; } | tee -a "$LOGS/$name.log"
    rc=$(cat "$LOGS/$name.rc")
    case $rc in
    0) st=passed ;;
    124 | 137) st="OUT OF TIME" ;;
    *) st="FAILED (status $rc)" ;;
    esac
    printf '  %-16s %-20s %4ss of %ss\n' "$name" "$st" $(($(date +%s) - t0)) "$budget" >>"$LOGS/stages"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
    return "$rc"
}

# unpack DIR CUDA_LIBS: the pack into DIR (Python's lzma where the xz program is missing); then
# the programs' libraries resolve (from the pack, and glibc, the C++ runtime and CUDA from this
# machine) and focusd starts. run's first stage.
unpack() {
    if command -v xz >/dev/null; then
        tar -C "$1" -xJf "$PACK/build.tar.xz"
    else
        python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' \
            "$PACK/build.tar.xz" "$1"
    fi || return 1
    # shellcheck disable=SC2086 # PROGRAMS is a list
    (cd "$1" && LD_LIBRARY_PATH="$2" ldd $PROGRAMS lib/*) | grep 'not found' && return 1
    LD_LIBRARY_PATH="$2" "$1/focusd" --version
}

card() {
    nvidia-smi --query-gpu="$1" --format=csv,noheader 2>/dev/null | head -n 1
}

run() {
    out=$1
    [ -f "$PACK/build.tar.xz" ] || die "$PACK/build.tar.xz is missing: tools/gpu-check.sh pack first"
    mkdir -p "$out" || die "cannot create $out"
    B=${GPU_CHECK_BUILD:-build/gpu-check}
    LOGS=$(mktemp -d)
    failed=0
    nogpu=0
    started=$(date +%s)
    : >"$LOGS/stages"
    export BENCH_GPU_ARGS="${BENCH_GPU_ARGS:---runs 1 --repeats 3}"
    cudalibs=$(tools/bench-gpu.sh cuda-libs)

    rm -rf "$B" && mkdir -p "$B"
    stage unpack "${BUDGET_UNPACK:-20}" "$0" unpack "$B" "$cudalibs"

    # The tests: exactly `make test-gpu`, with make told that the carried programs are current
    # (their sources are newer copies, and this machine cannot rebuild them); what it runs
    # where make is missing.
    if command -v make >/dev/null; then
        test_gpu="make --no-print-directory BUILD=$B"
        for p in $PROGRAMS; do test_gpu="$test_gpu -o $B/$p"; done
        test_gpu="$test_gpu test-gpu"
    else
        test_gpu="tests/gpu/run.sh $B"
    fi
    # shellcheck disable=SC2086 # test_gpu is a command line
    stage test-gpu "${BUDGET_TEST:-240}" env LD_LIBRARY_PATH="$cudalibs" $test_gpu
    grep -q 'no usable CUDA device: nothing was checked' "$LOGS/test-gpu.log" && nogpu=1

    # The benchmark: the parts of `make bench-gpu`, each in its own budget.
    if [ "$nogpu" -eq 0 ]; then
        export BUILD="$B" BENCH_GPU_OUT="$B/bench-gpu" BENCH_GPU_WHEELS="$PACK/wheels"
        if stage bench-model "${BUDGET_MODEL:-40}" tools/bench-gpu.sh model; then
            stage bench-ours "${BUDGET_OURS:-80}" tools/bench-gpu.sh ours
            stage bench-diffusers "${BUDGET_DIFFUSERS:-80}" tools/bench-gpu.sh diffusers
            # Figures of a side cut short by its budget still compare.
            [ -s "$BENCH_GPU_OUT/ours.txt" ] && [ -s "$BENCH_GPU_OUT/diffusers.txt" ] &&
                stage bench-ratios 10 tools/bench-gpu.sh ratios
        fi
    fi

    if [ "$nogpu" -eq 1 ]; then
        verdict="NO GPU: no usable CUDA device was found; nothing was checked (status 3)"
        status=3
    elif [ "$failed" -eq 0 ]; then
        verdict="PASSED: every test passed and every stage ended within its budget"
        status=0
    else
        verdict="FAILED: $failed stage(s) failed or ran out of time (status 1)"
        status=1
    fi
    report=$out/gpu-check-report.txt
    {
        echo "focusd GPU check, $(date -u +%Y-%m-%dT%H:%MZ), $(($(date +%s) - started)) s"
        echo "verdict: $verdict"
        name=$(card name)
        echo "card: ${name:-none (nvidia-smi is missing or lists no GPU)}"
        [ -n "$name" ] && echo "driver $(card driver_version); memory $(card memory.total); compute capability $(card compute_cap)"
        echo "nvcc: $(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p'); compute-sanitizer: $(compute-sanitizer --version 2>/dev/null | sed -n 's/.*Version \(.*\)/\1/p' | head -n 1)"
        echo "CUDA libraries from: ${cudalibs:-not found}"
        echo "pack:"
        sed 's/^/  /' "$PACK/MANIFEST"
        echo "stages:"
        cat "$LOGS/stages"
        echo "results:"
        grep -hE '^(RESULT|FAIL|SKIP)|^  cuda .*request|test-gpu:|ERROR SUMMARY' "$LOGS/test-gpu.log" | sed 's/^/  /'
        if [ -f "$B/bench-gpu/ratios.txt" ]; then
            echo "figures (bench-gpu, $BENCH_GPU_ARGS):"
            sed 's/^/  /' "$B/bench-gpu/ratios.txt"
        fi
        echo
        echo "logs:"
        # At most 2 MB a stage: the device tool brings back files of 16 MiB at most, and a
        # sanitizer that reports every hazard can write far more.
        for s in unpack test-gpu bench-model bench-ours bench-diffusers bench-ratios; do
            [ -f "$LOGS/$s.log" ] || continue
            size=$(wc -c <"$LOGS/$s.log")
            if [ "$size" -gt 2000000 ]; then
                head -c 500000 "$LOGS/$s.log"
                printf '\n[... %s bytes of this log left out ...]\n' $((size - 2000000))
                tail -c 1500000 "$LOGS/$s.log"
            else
                cat "$LOGS/$s.log"
            fi
        done
    } >"$report"
    rm -rf "$LOGS"
    echo "gpu-check: $verdict"
    echo "gpu-check: report in $report"
    return "$status"
}

case "${1:-}" in
pack) pack ;;
unpack) unpack "$2" "$3" ;; # run's first stage, in its own process for timeout
run)
    [ $# -eq 2 ] || die "usage: $0 run OUTDIR"
    run "$2"
    ;;
*)
    echo "usage: $0 pack | run OUTDIR" >&2
    exit 2
    ;;
esac
