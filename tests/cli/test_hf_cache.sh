#!/bin/sh
# A model named as Hugging Face users hold it: `--model ORG/NAME` (focus-run) and
# `--model NAME=ORG/NAME` (focusd) find $HF_HOME/hub/models--ORG--NAME/snapshots/<refs/main>/
# in a cache laid out as `huggingface-cli download` leaves it (blobs/ holding the files,
# snapshots/ a tree of relative symlinks into blobs/), here a fake one in a temporary directory
# whose blobs are symlinks onto the fixture model's files (its own links followed). A repository
# that is not in the cache fails with a message naming the paths tried; a plain directory keeps
# working.
# Run from the repository root: tests/cli/test_hf_cache.sh [path/to/focus-run [path/to/focusd]]
set -u
BUILD=${BUILD:-build}
RUN=${1:-$BUILD/focus-run}
FOCUSD=${2:-$BUILD/focusd}
FOCUS=$BUILD/focus
MODEL=$(cd "${FOCUS_FIXTURES:-tests/fixtures}/tiny-sd35" && pwd)
. tests/cli/harness.sh
trap stop_focusd_and_clean EXIT
trap 'exit 2' INT TERM
unset HF_HUB_CACHE HUGGINGFACE_HUB_CACHE XDG_CACHE_HOME FOCUS_SOCKET

COMMIT=5a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b
REPO=$TMP/hf/hub/models--org--tiny
mkdir -p "$REPO/blobs" "$REPO/refs" "$REPO/snapshots/$COMMIT"
printf '%s' "$COMMIT" >"$REPO/refs/main"
n=0
(cd "$MODEL" && find -L . -type f | sed 's|^\./||') | while read -r rel; do
    n=$((n + 1))
    ln -s "$MODEL/$rel" "$REPO/blobs/$n"
    up=$(printf '%s' "$rel" | sed 's|[^/]*/|../|g; s|[^/]*$||')
    mkdir -p "$(dirname "$REPO/snapshots/$COMMIT/$rel")"
    ln -s "../../${up}blobs/$n" "$REPO/snapshots/$COMMIT/$rel"
done
check "the snapshot is a symlink tree" test -L "$REPO/snapshots/$COMMIT/vae/config.json"

expect 0 "tokenize from the plain directory" -- "$RUN" tokenize --model "$MODEL" "a photo of a cat"
cp "$TMP/out" "$TMP/plain"
export HF_HOME=$TMP/hf
expect 0 "tokenize from the cache" -- "$RUN" tokenize --model org/tiny "a photo of a cat"
cp "$TMP/out" "$TMP/plain-ids"
expect 0 "tokenize from the cache named as focusd names it" -- "$RUN" tokenize --model tiny=org/tiny "a photo of a cat"
check "NAME=ORG/NAME reads the same model" cmp -s "$TMP/out" "$TMP/plain-ids"
check "the same ids either way" cmp -s "$TMP/out" "$TMP/plain"
expect 0 "generate from the cache" -- "$RUN" generate --model org/tiny --prompt x --steps 1 \
    --width 64 --height 64 -o "$TMP/g.png"
check "generate writes the PNG" test -s "$TMP/g.png"

expect 1 "a repository not in the cache" -- "$RUN" tokenize --model org/absent "a cat"
check "the error names the directory and the cache file tried" sh -c \
    'grep -q "tried the directory org/absent" "$1" && grep -qF "$2/hub/models--org--absent/refs/main" "$1"' \
    sh "$TMP/err" "$TMP/hf"
expect 0 "HF_HUB_CACHE wins over HF_HOME" -- env HF_HUB_CACHE="$TMP/hf/hub" \
    HF_HOME="$TMP/elsewhere" "$RUN" tokenize --model org/tiny "a cat"

if [ ! -x "$FOCUSD" ] || [ ! -x "$FOCUS" ]; then
    echo "SKIP daemon tests: $FOCUSD or $FOCUS is not built"
else
    check "focusd serves a model named by its repository id" start_focusd "$FOCUSD" "$FOCUS" org/tiny cpu
    expect 0 "models names the snapshot read" -- "$FOCUS" -s "$SOCK" --json models
    check "models names the snapshot read" grep -q "snapshots/$COMMIT" "$TMP/out"
    expect 0 "focusd generates from it" -- "$FOCUS" -s "$SOCK" --timeout 60 -q generate x \
        --size 64x64 --steps 1 -o "$TMP/d.png"
    check "focusd's log names the snapshot" grep -q "snapshots/$COMMIT" "$TMP/focusd.log"
    kill "$DAEMON_PID" && wait "$DAEMON_PID" 2>/dev/null
    DAEMON_PID=
fi

echo "RESULT passed=$passed failed=$failed"
[ "$failed" -eq 0 ]
