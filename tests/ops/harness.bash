# Shared by the operations test scripts (sourced by bash, not run): the counters, ok/fail, the
# check assertion, and finish, which prints the closing "N passed, N failed" line and exits
# with the verdict.
passed=0
failed=0
ok() {
    echo "ok $1"
    passed=$((passed + 1))
}
fail() {
    echo "FAIL $1: ${*:2}"
    failed=$((failed + 1))
}
# check NAME WHY COMMAND...: ok when COMMAND succeeds, else FAIL with WHY.
check() {
    local name=$1 why=$2
    shift 2
    if "$@"; then ok "$name"; else fail "$name" "$why"; fi
}
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}
