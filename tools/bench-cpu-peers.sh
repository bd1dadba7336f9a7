#!/bin/sh
# make bench-cpu-peers in one command: installs torch and diffusers from PyPI into a venv under
# $BUILD (once: a stamp holds the requirements it was made from), then runs
# tools/bench_cpu_peers.py, which times this engine and diffusers one process at a time on the
# same model directory, cores and thread count.
#
#   tools/bench-cpu-peers.sh [setup|run] [options of bench_cpu_peers.py]
#
# Environment: BUILD (build), BENCH_MODEL ($BUILD/bench-model), PYTHON (python3, for the venv).
# Not a test: it passes nothing and fails nothing.
set -eu

BUILD=${BUILD:-build}
BENCH_MODEL=${BENCH_MODEL:-$BUILD/bench-model}
PYTHON=${PYTHON:-python3}
VENV=$BUILD/peers-venv
REQ=tools/bench-cpu-peers-requirements.txt
STAMP=$VENV/.requirements

setup() {
    if [ -f "$STAMP" ] && cmp -s "$REQ" "$STAMP"; then
        return
    fi
    echo "bench-cpu-peers: installing $(grep -v '^#' "$REQ" | tr '\n' ' ')into $VENV (about 3 GB from PyPI, once)"
    [ -x "$VENV/bin/python" ] || $PYTHON -m venv "$VENV"
    "$VENV/bin/pip" install -q --no-cache-dir -r "$REQ"
    cp "$REQ" "$STAMP"
}

run() {
    setup
    exec "$VENV/bin/python" tools/bench_cpu_peers.py --build "$BUILD" "$@" "$BENCH_MODEL"
}

case "${1:-run}" in
setup) setup ;;
run)
    [ $# -gt 0 ] && shift
    run "$@"
    ;;
-*) run "$@" ;;
*)
    echo "usage: $0 [setup|run] [bench_cpu_peers.py options]" >&2
    exit 2
    ;;
esac
