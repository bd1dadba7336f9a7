#!/bin/sh
# The invariance and parity tests again with oneDNN held to other instruction sets
# (ONEDNN_MAX_CPU_ISA), so that one machine exercises the code paths other CPUs take: SSE4.1,
# AVX2 (6-row kernels, no bf16 products: the rounded float32 fallback), AVX-512 without BF16
# (bf16 emulated by oneDNN) and AVX512-BF16. The plain run of the suite covers this CPU's best
# (AMX where it has it). A set this CPU lacks is capped by oneDNN at what it has.
BUILD=${BUILD:-build}
passed=0
failed=0
for isa in SSE41 AVX2 AVX512_CORE AVX512_CORE_BF16; do
    # SSE4.1 is slow: the invariance test alone there.
    if [ "$isa" = SSE41 ]; then tests="test_invariance"; else
        tests="test_invariance test_pipeline test_precision test_mmdit test_vae test_text_encode test_kernels"
    fi
    for t in $tests; do
        out=$(ONEDNN_MAX_CPU_ISA=$isa "$BUILD/tests/$t" 2>&1)
        rc=$?
        if [ $rc -eq 0 ]; then
            echo "ok   $t under ONEDNN_MAX_CPU_ISA=$isa"
            passed=$((passed + 1))
        else
            printf '%s\n' "$out" | grep -v '^ok ' | tail -n 20
            echo "FAIL $t under ONEDNN_MAX_CPU_ISA=$isa (status $rc)"
            failed=$((failed + 1))
        fi
    done
done
echo "RESULT passed=$passed failed=$failed"
[ "$failed" -eq 0 ]
