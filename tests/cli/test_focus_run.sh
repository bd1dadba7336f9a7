#!/bin/sh
# Command-line behaviour of focus-run tokenize/encode on the fixture model: exit statuses (0 ok,
# 1 failed work, 2 bad command line), the labelled id lines, and the .npy files encode writes
# with the shapes encode_prompt gives. Numerical agreement is tests/unit/test_text_encode.c's
# job. Run from the repository root: tests/cli/test_focus_run.sh [path/to/focus-run]
set -u
RUN=${1:-${BUILD:-build}/focus-run}
MODEL=${FOCUS_FIXTURES:-tests/fixtures}/tiny-sd35
. tests/cli/harness.sh
trap 'rm -rf "$TMP"' EXIT

# The .npy shape as numpy writes it in the header, e.g. "(1, 333, 128)".
npy_shape() { head -c 128 "$1" | LC_ALL=C tr -cd '[:print:]' | LC_ALL=C sed -n "s/.*'shape': \(([^)]*)\).*/\1/p"; }

expect 0 "help" -- "$RUN" --help
expect 0 "encode help" -- "$RUN" encode --help
check "encode help lists every option" grep -q -- "--max-seq N .*default 256" "$TMP/out"
expect 2 "no command" -- "$RUN"
expect 2 "unknown command" -- "$RUN" frobnicate
expect 2 "unknown option" -- "$RUN" encode --model "$MODEL" --prompt x --dump "$TMP/d" --frob
expect 2 "max-seq above 512" -- "$RUN" encode --model "$MODEL" --prompt x --dump "$TMP/d" --max-seq 513
expect 2 "missing --dump" -- "$RUN" encode --model "$MODEL" --prompt x
expect 2 "tokenize without text" -- "$RUN" tokenize --model "$MODEL"
expect 1 "missing model" -- "$RUN" tokenize --model "$TMP/none" "a cat"

expect 0 "tokenize" -- "$RUN" tokenize --model "$MODEL" "a photo of a cat"
check "tokenize clip_l line" grep -q "^clip_l: 49406 320 1125 539 320 2368 49407 49407" "$TMP/out"
check "tokenize clip_g pads with 0" grep -q "^clip_g: 49406 320 1125 539 320 2368 49407 0 0" "$TMP/out"
check "tokenize t5 has 256 ids" test "$(sed -n 's/^t5: //p' "$TMP/out" | wc -w)" -eq 256

expect 0 "encode" -- "$RUN" encode --model "$MODEL" --prompt "a cat" --dump "$TMP/d" --max-seq 77 --images 2
check "prompt_embeds shape" test "$(npy_shape "$TMP/d/prompt_embeds.npy")" = "(2, 154, 128)"
check "pooled shape" test "$(npy_shape "$TMP/d/pooled.npy")" = "(2, 80)"
check "negative written" test -f "$TMP/d/negative_prompt_embeds.npy" -a -f "$TMP/d/negative_pooled.npy"

expect 0 "encode --no-cfg" -- "$RUN" encode --model "$MODEL" --prompt "" --dump "$TMP/n" --no-cfg
check "no negative with --no-cfg" test ! -e "$TMP/n/negative_prompt_embeds.npy"
check "default max-seq 256" test "$(npy_shape "$TMP/n/prompt_embeds.npy")" = "(1, 333, 128)"

echo "RESULT passed=$passed failed=$failed"
[ "$failed" -eq 0 ]
