# Shared by the command-line test suites (sourced, not run): a scratch directory $TMP, the
# counters, the two assertions, and focusd started on the fixture model. The suite prints "RESULT passed=N failed=M" at its end.
TMP=$(mktemp -d) || exit 2
passed=0
failed=0

expect() { # expect STATUS DESCRIPTION -- COMMAND...
    want=$1 what=$2
    shift 3
    "$@" >"$TMP/out" 2>"$TMP/err"
    got=$?
    if [ "$got" -eq "$want" ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL $what: status $got, expected $want"
        sed 's/^/  /' "$TMP/err"
    fi
}

DAEMON_PID=
# The EXIT trap of a suite that starts focusd: stops it if it still runs, removes $TMP.
stop_focusd_and_clean() {
    [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
    rm -rf "$TMP"
}

# start_focusd FOCUSD FOCUS MODEL DEVICE: sets SOCK, DAEMON_PID; fails unless focusd answers and
# has loaded the model within a minute (it answers while loading, and refuses jobs until then).
start_focusd() {
    SOCK="ipc://$TMP/focusd.sock"
    "$1" --model "tiny=$3" --listen "$SOCK" --state-dir "$TMP/state" --device "$4" \
        2>"$TMP/focusd.log" &
    DAEMON_PID=$!
    for _ in $(seq 1 120); do
        if "$2" -s "$SOCK" --timeout 1 --json models 2>/dev/null | grep -q '"loaded":true'; then
            return 0
        fi
        kill -0 "$DAEMON_PID" 2>/dev/null || break
        sleep 0.5
    done
    sed 's/^/  focusd: /' "$TMP/focusd.log" | tail -n 20
    return 1
}

check() { # check DESCRIPTION CONDITION...
    what=$1
    shift
    if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL $what"; fi
}
