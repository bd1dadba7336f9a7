#!/bin/sh
# focusd serving the fixture model on a GPU (device cuda, precision auto = bf16) to several
# clients at once, through the C client only (no Python on the GPU machine): four concurrent
# `focus generate` jobs of two shapes each write their PNGs, `focus models` reports the CUDA
# device, bf16 and the memory held, and SIGTERM stops the daemon with status 0.
# Run by tests/gpu/run.sh when a test found a device: tests/gpu/daemon_gpu.sh BUILD_DIR
# (FOCUSD_GPU_TEST_DEVICE=cpu runs the same script on the CPU, to check the script itself).
set -u
BUILD=${1:-build}
DEVICE=${FOCUSD_GPU_TEST_DEVICE:-cuda}
MODEL=${FOCUS_FIXTURES:-tests/fixtures}/tiny-sd35
FOCUS=$BUILD/focus
. tests/cli/harness.sh
up=0
start_focusd "$BUILD/focusd" "$FOCUS" "$MODEL" "$DEVICE" && up=1
PID=$DAEMON_PID
trap 'kill "$PID" 2>/dev/null; rm -rf "$TMP"' EXIT
check "focusd starts on $DEVICE and answers ping" test "$up" -eq 1
[ "$up" -eq 1 ] || { echo "RESULT passed=$passed failed=$failed"; exit 1; }

expect 0 "models" -- "$FOCUS" -s "$SOCK" --json models
want_dtype=$([ "$DEVICE" = cpu ] && echo fp32 || echo bf16)
check "models reports the device and precision" sh -c 'grep -q "\"device\":\"$2" "$1" && grep -q "\"dtype\":\"$3\"" "$1"' sh "$TMP/out" "$DEVICE" "$want_dtype"
check "models reports memory held" sh -c '! grep -q "\"memory\":0," "$1"' sh "$TMP/out"

pids=""
for i in 1 2 3 4; do
    size=$([ $((i % 2)) -eq 0 ] && echo 64x64 || echo 128x64)
    "$FOCUS" -s "$SOCK" --timeout 120 -q generate "client $i" --size "$size" --steps 8 \
        --seed "$i" -o "$TMP/c$i.png" >"$TMP/c$i.out" 2>"$TMP/c$i.err" &
    pids="$pids $!"
done
n=0
for p in $pids; do
    n=$((n + 1))
    wait "$p"
    check "client $n's job is done" test $? -eq 0
    check "client $n's PNG" test "$(head -c 4 "$TMP/c$n.png" | od -An -tx1 | tr -d ' \n')" = "89504e47"
done
kill -TERM "$PID"
wait "$PID"
check "SIGTERM stops focusd with status 0" test $? -eq 0
trap 'rm -rf "$TMP"' EXIT
echo "RESULT passed=$passed failed=$failed"
[ "$failed" -eq 0 ]
