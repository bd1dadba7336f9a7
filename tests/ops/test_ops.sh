#!/bin/sh
# Hooks the operations tests into tests/run: runs run.sh (a bash script) and turns its closing
# "N passed, N failed" line into the "RESULT passed=N failed=M" line that tests/run sums. The
# package test (package.sh) is not run here: it installs packages on the machine.
out=$(bash "$(dirname "$0")/run.sh" 2>&1)
rc=$?
printf '%s\n' "$out" | sed '$d'
last=$(printf '%s\n' "$out" | tail -n 1)
p=$(printf '%s' "$last" | sed -n 's/^\([0-9]*\) passed.*/\1/p')
f=$(printf '%s' "$last" | sed -n 's/.* \([0-9]*\) failed.*/\1/p')
echo "RESULT passed=${p:-0} failed=${f:-1}"
exit $rc
