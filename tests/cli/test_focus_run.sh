#!/bin/sh
# Command-line behaviour of focus-run tokenize/encode/generate on the fixture model: exit
# statuses (0 ok, 1 failed work, 2 bad command line), the labelled id lines, the .npy files
# encode and generate --dump write with the shapes the pipeline gives, generate's PNG files,
# progress and documented defaults. Numerical agreement is the unit tests' job
# (test_text_encode.c, test_pipeline.c). Run from the repository root: tests/cli/test_focus_run.sh [path/to/focus-run]
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

is_png() { [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ]; }

expect 0 "generate help" -- "$RUN" generate --help
check "generate help states the model card's defaults" sh -c 'grep -q "default 28" "$1" && grep -q "default 4.5" "$1" && grep -q "default 512" "$1" && grep -q "default 77" "$1"' sh "$TMP/out"
check "generate help lists --precision and --text-device" sh -c 'grep -q -- "--precision" "$1" && grep -q -- "--text-device" "$1"' sh "$TMP/out"
G="generate --model $MODEL --prompt x --steps 2 --width 64 --height 64"
expect 2 "generate without --output" -- "$RUN" $G
expect 2 "generate width not a multiple of 16" -- "$RUN" generate --model "$MODEL" --prompt x --width 72 -o "$TMP/g.png"
expect 2 "generate unknown precision" -- "$RUN" $G --precision fp8 -o "$TMP/g.png"
expect 2 "generate unknown text device" -- "$RUN" $G --text-device gpu -o "$TMP/g.png"
expect 0 "generate with --dump" -- "$RUN" $G --seed 3 -o "$TMP/g.png" --dump "$TMP/gd"
check "generate writes a PNG" is_png "$TMP/g.png"
check "generate reports progress on stderr" grep -q "step 2/2" "$TMP/err"
check "noise.npy shape" test "$(npy_shape "$TMP/gd/noise.npy")" = "(1, 16, 8, 8)"
check "latents.npy shape" test "$(npy_shape "$TMP/gd/latents.npy")" = "(1, 16, 8, 8)"
check "image.npy shape (NHWC)" test "$(npy_shape "$TMP/gd/image.npy")" = "(1, 64, 64, 3)"
expect 0 "generate --count 2" -- "$RUN" $G --count 2 -o "$TMP/c.png"
check "the second image goes to c-1.png" sh -c 'is_png() { [ "$(head -c 8 "$1" | od -An -tx1 | tr -d " \n")" = "89504e470d0a1a0a" ]; }; is_png "$1/c.png" && is_png "$1/c-1.png"' sh "$TMP"
expect 0 "generate in bf16 with the text encoders apart" -- "$RUN" $G --precision bf16 --text-device cpu -o "$TMP/b.png"
check "bf16 writes a PNG" is_png "$TMP/b.png"
expect 2 "generate --threads 0" -- "$RUN" $G --threads 0 -o "$TMP/t.png"
for p in fp32 bf16; do
    expect 0 "generate $p on 1 thread" -- "$RUN" $G --seed 5 --precision $p --threads 1 -o "$TMP/t1.png"
    expect 0 "generate $p on 3 threads" -- "$RUN" $G --seed 5 --precision $p --threads 3 -o "$TMP/t3.png"
    check "$p: the same PNG bytes on 1 and 3 threads" cmp -s "$TMP/t1.png" "$TMP/t3.png"
done

echo "RESULT passed=$passed failed=$failed"
[ "$failed" -eq 0 ]
