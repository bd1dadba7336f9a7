#!/bin/sh
# The build-machine half of tools/gpu-check.sh: the pack holds every program the GPU half runs,
# with GPU code for the targets it promises, and the libraries they need beyond glibc, the C++
# runtime and CUDA, each of which resolves from the pack; the tree and the pack fit the 64 MiB a
# device call carries; and the GPU half, run where no GPU exists, says that nothing was checked,
# exits with status 3 and writes its report. The wheels are not downloaded here (no network in
# make test): their 16 MB are counted by the real `tools/gpu-check.sh pack`.
# Skips (passing nothing) when the build holds no CUDA code (nvcc was not found by make).
cd "$(dirname "$0")/../.." || exit 2
BUILD=${BUILD:-build}
. tests/cli/harness.sh
trap 'rm -rf "$TMP"' EXIT
if ! ldd "$BUILD/focusd" 2>/dev/null | grep -q libcudart; then
    echo "SKIP test_gpu_check: skipped: $BUILD/focusd was built without CUDA"
    echo "RESULT passed=0 failed=0"
    exit 0
fi
export GPU_CHECK_PACK="$TMP/pack" GPU_CHECK_BUILD="$TMP/build" GPU_CHECK_NO_WHEELS=1

expect 2 "run without a pack is refused" -- tools/gpu-check.sh run "$TMP/out"
check "the refusal names the missing pack" grep -q "build.tar.xz is missing" "$TMP/err"

expect 0 "pack" -- env BUILD="$BUILD" tools/gpu-check.sh pack
cp "$TMP/out" "$TMP/pack.out"
check "the manifest names the GPU targets" grep -q "GPU code ptx_90 sm_80 sm_89 sm_90a" "$TMP/pack/MANIFEST"
bytes=$(sed -n 's/.* MiB of 64 MiB (\([0-9]*\) bytes)$/\1/p' "$TMP/pack.out")
check "the tree and the pack fit 64 MiB (${bytes:-?} bytes)" test "${bytes:-999999999}" -lt 67108864

mkdir "$TMP/u"
tar -C "$TMP/u" -xJf "$TMP/pack/build.tar.xz"
for p in tests-gpu/test_cuda_ops tests-gpu/test_gpu_pipeline focusd focus bench/bench_gpu; do
    check "$p is packed" test -x "$TMP/u/$p"
done
for l in libzmq.so.5 libmsgpackc.so.2 libdnnl.so.2 libgomp.so.1 libpng16.so.16 libsqlite3.so.0 \
    libjansson.so.4 libutf8proc.so.2 libpcre2-8.so.0 libsystemd.so.0 libmd.so.0; do
    check "$l is packed" test -f "$TMP/u/lib/$l"
done
check "no glibc, C++ runtime or CUDA library is packed" \
    sh -c '! ls "$1" | grep -Eq "^(libc|libm|libstdc\+\+|libgcc_s|libcudart|libcublas)\."' sh "$TMP/u/lib"
# Every library a carried file needs is the pack's own (through the programs' RPATH), whatever
# this machine has installed, except glibc, the C++ runtime and CUDA.
lib=$(cd "$TMP/u/lib" && pwd -P)
for f in "$TMP"/u/focusd "$TMP"/u/focus "$TMP"/u/tests-gpu/* "$TMP"/u/bench/* "$TMP"/u/lib/*; do
    stray=$(env -u LD_LIBRARY_PATH ldd "$f" | awk '$2 == "=>" { print $1, $3 }' |
        grep -Ev '^(linux-vdso|ld-linux-x86-64|libc|libm|libdl|librt|libpthread|libresolv|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libcublasLt)\.so' |
        while read -r name path; do
            case "$(realpath "$path" 2>/dev/null)" in "$lib"/*) ;; *) echo "$name=$path" ;; esac
        done)
    check "${f#"$TMP"/u/} resolves from the pack${stray:+ (not: $stray)}" test -z "$stray"
done

expect 3 "run without a GPU exits with status 3" -- tools/gpu-check.sh run "$TMP/report"
report=$TMP/report/gpu-check-report.txt
check "the report is written" test -f "$report"
check "the report says nothing was checked" grep -q "^verdict: NO GPU: .*nothing was checked" "$report"
check "the report says the card is missing" grep -q "^card: none" "$report"
check "the report lists the stages" grep -q "^  test-gpu " "$report"
check "no benchmark runs without a GPU" sh -c '! grep -q "bench-model" "$1"' sh "$report"
echo "RESULT passed=$passed failed=$failed"
[ "$failed" -eq 0 ]
