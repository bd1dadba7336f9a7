#!/bin/sh
# Hooks the operations tests into tests/run: runs run.sh (installing and running) and build.sh
# (the layers, the first run, what the programs link), both bash scripts, and turns their
# closing "N passed, N failed" lines into the one "RESULT passed=N failed=M" line that
# tests/run sums. The package test (package.sh) is not run here: it installs packages on the
# machine.
passed=0
failed=0
rc=0
for suite in run.sh build.sh; do
    out=$(bash "$(dirname "$0")/$suite" 2>&1) || rc=1
    printf '%s\n' "$out" | sed '$d'
    last=$(printf '%s\n' "$out" | tail -n 1)
    p=$(printf '%s' "$last" | sed -n 's/^\([0-9]*\) passed.*/\1/p')
    f=$(printf '%s' "$last" | sed -n 's/.* \([0-9]*\) failed.*/\1/p')
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-1}))
done
echo "RESULT passed=$passed failed=$failed"
exit $rc
