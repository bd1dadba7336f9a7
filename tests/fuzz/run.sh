#!/bin/sh
# Builds the protocol fuzz target with clang's libFuzzer, ASan and UBSan, and runs it over the
# committed corpus for a bounded time. Usage: tests/fuzz/run.sh [seconds] (default 60).
# Needs clang and the libFuzzer runtime (Debian: clang-14 libclang-rt-14-dev).
# New inputs found go to a scratch directory, not into the committed corpus.
set -eu
cd "$(dirname "$0")/../.."
SECONDS_TO_RUN=${1:-60}
CLANG=${CLANG:-$(command -v clang-14 || command -v clang)}
OUT=build/fuzz
mkdir -p "$OUT/new"
PKG="msgpack libutf8proc libmd"
# shellcheck disable=SC2046
"$CLANG" -std=c11 -D_GNU_SOURCE -g -O1 -I. $(pkg-config --cflags $PKG) \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    tests/fuzz/fuzz_protocol.c protocol/*.c common/err.c common/xalloc.c \
    $(pkg-config --libs $PKG) -o "$OUT/fuzz_protocol"
# libFuzzer reports every new input; its log goes to a file and only the summary is shown, or
# the end of the log when it finds something.
if "$OUT/fuzz_protocol" -max_total_time="$SECONDS_TO_RUN" -max_len=70000 -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 "$OUT/new" tests/fuzz/corpus/protocol \
    >"$OUT/log" 2>&1; then
    grep -E '^(stat::|Done )' "$OUT/log"
else
    rc=$?
    tail -n 60 "$OUT/log"
    echo "fuzz_protocol: failed (status $rc); full log in $OUT/log" >&2
    exit "$rc"
fi
