#!/bin/sh
# Command-line behaviour of the focus client. Without a daemon: help and version, exit status 2
# for bad command lines (before any connection), exit status 3 at once for a daemon that is not
# there (no socket file) and within the timeout for one that does not answer, and the JSON
# error object of --json. With build/focusd (started on a temporary ipc socket and state
# directory with the fixture model): generate a 64x64 image in 2 steps and check the PNG and
# its SHA-256, --count naming, submit/watch/fetch, status, jobs, cancel, the not-found and
# unreachable statuses, and that every --json line parses. The daemon part is skipped, with a
# message, when build/focusd is not built.
# Run from the repository root: tests/cli/test_focus_client.sh [path/to/focus [path/to/focusd]]
set -u
BUILD=${BUILD:-build}
FOCUS=${1:-$BUILD/focus}
FOCUSD=${2:-$BUILD/focusd}
MODEL=${FOCUS_FIXTURES:-tests/fixtures}/tiny-sd35
. tests/cli/harness.sh
trap stop_focusd_and_clean EXIT
trap 'exit 2' INT TERM
unset FOCUS_SOCKET

# Every line of FILE is a JSON object (python3 is the parser; without it, a shape check).
json_lines() {
    [ -s "$1" ] || return 1
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import json,sys
for line in open(sys.argv[1]):
    assert isinstance(json.loads(line), dict)' "$1" 2>/dev/null
    else
        ! grep -qv '^{.*}$' "$1"
    fi
}

# The value of KEY in the last JSON line of FILE that has it (simple string and number values).
json_get() { sed -n "s/.*\"$2\":\"\{0,1\}\([^\",}]*\).*/\1/p" "$1" | tail -n 1; }

is_png() { [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ]; }

# ---- Without a daemon ----

expect 0 "help" -- "$FOCUS" --help
check "help lists the exit statuses" grep -q "^  3  the daemon is not reachable" "$TMP/out"
check "help lists every command" sh -c 'for c in generate submit watch fetch status jobs cancel models stats ping; do grep -q "^  $c " "$1" || exit 1; done' sh "$TMP/out"
expect 0 "generate help" -- "$FOCUS" generate --help
check "generate help lists its options" sh -c 'for o in -o --seed --steps --cfg --size --negative --model --count --priority --max-seq --socket --timeout --json --quiet; do grep -q -- "$o" "$1" || exit 1; done' sh "$TMP/out"
expect 0 "help COMMAND" -- "$FOCUS" help jobs
check "help COMMAND is the command's help" grep -q "^usage: focus jobs" "$TMP/out"
expect 0 "version" -- "$FOCUS" --version
check "version line" grep -q "^focus [0-9]" "$TMP/out"

NOWHERE="ipc://$TMP/none.sock"
expect 2 "no command" -- "$FOCUS"
expect 2 "unknown command" -- "$FOCUS" frobnicate
expect 2 "unknown option" -- "$FOCUS" -s "$NOWHERE" generate x --frob
expect 2 "missing prompt" -- "$FOCUS" -s "$NOWHERE" generate
expect 2 "option without its value" -- "$FOCUS" -s "$NOWHERE" generate x --steps
expect 2 "steps 0" -- "$FOCUS" -s "$NOWHERE" generate x --steps 0
expect 2 "steps 201" -- "$FOCUS" -s "$NOWHERE" generate x --steps 201
expect 2 "steps not a number" -- "$FOCUS" -s "$NOWHERE" generate x --steps 2x
expect 2 "size not a multiple of 16" -- "$FOCUS" -s "$NOWHERE" generate x --size 72x64
expect 2 "size below 64" -- "$FOCUS" -s "$NOWHERE" generate x --size 48
expect 2 "size malformed" -- "$FOCUS" -s "$NOWHERE" generate x --size 64x
expect 2 "cfg above 30" -- "$FOCUS" -s "$NOWHERE" generate x --cfg 30.5
expect 2 "negative seed" -- "$FOCUS" -s "$NOWHERE" generate x --seed -1
expect 2 "count 9" -- "$FOCUS" -s "$NOWHERE" generate x --count 9
expect 2 "priority 11" -- "$FOCUS" -s "$NOWHERE" submit x --priority 11
expect 2 "max-seq 513" -- "$FOCUS" -s "$NOWHERE" submit x --max-seq 513
expect 2 "count 2 to stdout" -- "$FOCUS" -s "$NOWHERE" generate x --count 2 -o -
expect 2 "jobs with a bad state" -- "$FOCUS" -s "$NOWHERE" jobs --state sleeping
expect 2 "jobs limit 0" -- "$FOCUS" -s "$NOWHERE" jobs --limit 0
expect 2 "fetch index 8" -- "$FOCUS" -s "$NOWHERE" fetch j1 --index 8
expect 2 "bad timeout" -- "$FOCUS" -s "$NOWHERE" --timeout 0 ping
expect 2 "extra argument" -- "$FOCUS" -s "$NOWHERE" cancel j1 j2
expect 2 "unsupported transport" -- "$FOCUS" -s "foo://bar" ping

expect 3 "no socket file" -- "$FOCUS" -s "$NOWHERE" ping
check "unreachable message names the endpoint" grep -q "daemon not reachable at $NOWHERE" "$TMP/err"
expect 3 "FOCUS_SOCKET is used" -- env FOCUS_SOCKET="$NOWHERE" "$FOCUS" status
check "FOCUS_SOCKET endpoint in the message" grep -q "$NOWHERE" "$TMP/err"
: >"$TMP/stale.sock"
start=$(date +%s)
expect 3 "socket file without a daemon" -- "$FOCUS" -s "ipc://$TMP/stale.sock" --timeout 0.5 jobs
check "unreachable within the timeout" test $(($(date +%s) - start)) -le 2
check "timeout message" grep -q "timed out after 0.5 s" "$TMP/err"
expect 3 "--json when unreachable" -- "$FOCUS" --json -s "$NOWHERE" stats
check "--json error object" json_lines "$TMP/out"
check "--json error status" test "$(json_get "$TMP/out" status)" = 3

# ---- With the daemon ----

if [ ! -x "$FOCUSD" ]; then
    echo "SKIP daemon tests: $FOCUSD is not built"
elif [ ! -f "$MODEL/model_index.json" ]; then
    echo "SKIP daemon tests: no fixture model at $MODEL"
else
    check "focusd starts and answers ping" start_focusd "$FOCUSD" "$FOCUS" "$MODEL" cpu
    export FOCUS_SOCKET="$SOCK"
    T="--timeout 30"

    expect 0 "ping" -- "$FOCUS" ping
    check "ping prints the round trip" grep -q "time=[0-9.]* ms" "$TMP/out"
    expect 0 "models --json" -- "$FOCUS" --json models
    check "models lists tiny" grep -q '"name":"tiny"' "$TMP/out"
    check "models JSON parses" json_lines "$TMP/out"

    expect 0 "generate" -- "$FOCUS" $T -q generate "a red cube" --size 64x64 --steps 2 --seed 7 -o "$TMP/a.png"
    check "generate prints the file name" grep -qx "$TMP/a.png" "$TMP/out"
    check "generate writes a PNG" is_png "$TMP/a.png"
    check "no progress with --quiet" test ! -s "$TMP/err"

    expect 0 "generate --json" -- "$FOCUS" $T --json generate "a red cube" --size 64x64 --steps 2 --seed 7 -o "$TMP/j.png"
    check "generate JSON parses" json_lines "$TMP/out"
    check "generate JSON has the done event" grep -q '"event":"done"' "$TMP/out"
    check "JSON sha256 is the file's" test "$(json_get "$TMP/out" sha256)" = "$(sha256sum "$TMP/j.png" | cut -d' ' -f1)"
    check "JSON image size" test "$(json_get "$TMP/out" width)x$(json_get "$TMP/out" height)" = "64x64"

    expect 0 "generate --count 2" -- "$FOCUS" $T generate "two cubes" --size 64x64 --steps 2 --count 2 -o "$TMP/b.png"
    check "count 2: b.png is a PNG" is_png "$TMP/b.png"
    check "count 2: b-1.png is a PNG" is_png "$TMP/b-1.png"
    check "plain progress lines off a terminal" grep -q ": done, 2 images" "$TMP/err"

    expect 0 "submit" -- "$FOCUS" $T submit "a blue sphere" --size 64x64 --steps 2
    JOB=$(cat "$TMP/out")
    check "submit prints a job id" test -n "$JOB"
    expect 0 "watch" -- "$FOCUS" $T -q watch "$JOB"
    expect 0 "fetch" -- "$FOCUS" $T fetch "$JOB" -o "$TMP/c.png"
    check "fetch writes a PNG" is_png "$TMP/c.png"
    expect 0 "fetch --index 0 to stdout" -- "$FOCUS" $T fetch "$JOB" --index 0 -o -
    check "stdout holds the same PNG" cmp -s "$TMP/out" "$TMP/c.png"
    expect 1 "fetch into a missing directory" -- "$FOCUS" $T fetch "$JOB" -o "$TMP/missing/c.png"
    check "the failure names the file" grep -q "cannot write $TMP/missing/c.png" "$TMP/err"
    expect 0 "fetch to /dev/null" -- "$FOCUS" $T fetch "$JOB" -o /dev/null
    check "/dev/null is written in place, not replaced" test -c /dev/null
    expect 5 "fetch an index beyond the count" -- "$FOCUS" $T fetch "$JOB" --index 1
    expect 0 "status --json" -- "$FOCUS" $T --json status "$JOB"
    check "status JSON parses" json_lines "$TMP/out"
    check "status says done" grep -q '"state":"done"' "$TMP/out"
    expect 0 "status" -- "$FOCUS" $T status "$JOB"
    check "status names the prompt" grep -q "^prompt: *a blue sphere" "$TMP/out"
    expect 0 "daemon summary --json" -- "$FOCUS" $T --json status
    check "summary JSON parses" json_lines "$TMP/out"
    expect 0 "jobs --json" -- "$FOCUS" $T --json jobs --state done --limit 50
    check "jobs JSON parses" json_lines "$TMP/out"
    check "jobs lists the job" grep -q "\"job\":\"$JOB\"" "$TMP/out"
    expect 0 "stats --json" -- "$FOCUS" $T --json stats
    check "stats JSON parses" json_lines "$TMP/out"

    # The scheduler interleaves jobs step by step, so the second job may start at once: it is
    # long too, so that canceling it cannot race its end.
    expect 0 "submit a long job" -- "$FOCUS" $T submit "long" --size 256x256 --steps 200
    LONG=$(cat "$TMP/out")
    expect 0 "submit a queued job" -- "$FOCUS" $T submit "queued" --size 256x256 --steps 200
    QUEUED=$(cat "$TMP/out")
    expect 0 "cancel the queued job" -- "$FOCUS" $T cancel "$QUEUED"
    expect 4 "watch a canceled job" -- "$FOCUS" $T -q watch "$QUEUED"
    expect 4 "fetch a canceled job" -- "$FOCUS" $T fetch "$QUEUED"
    expect 0 "cancel the long job" -- "$FOCUS" $T cancel "$LONG"
    expect 4 "the long job ends canceled" -- "$FOCUS" $T -q watch "$LONG"

    expect 5 "status of no such job" -- "$FOCUS" $T status no-such-job
    expect 5 "fetch of no such job" -- "$FOCUS" $T fetch no-such-job
    expect 5 "cancel of no such job" -- "$FOCUS" $T cancel no-such-job
    expect 5 "generate with no such model" -- "$FOCUS" $T generate x --model no-such-model

    kill "$DAEMON_PID" && wait "$DAEMON_PID" 2>/dev/null
    DAEMON_PID=
    expect 3 "ping after the daemon stopped" -- "$FOCUS" --timeout 1 ping
fi

echo "RESULT passed=$passed failed=$failed"
[ "$failed" -eq 0 ]
