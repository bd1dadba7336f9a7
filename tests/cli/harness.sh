# Shared by the command-line test suites (sourced, not run): a scratch directory $TMP, the
# counters, and the two assertions. The suite prints "RESULT passed=N failed=M" at its end.
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

check() { # check DESCRIPTION CONDITION...
    what=$1
    shift
    if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL $what"; fi
}
