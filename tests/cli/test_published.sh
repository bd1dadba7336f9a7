#!/bin/sh
# focus-run end to end on a pipeline in the published SD3.5-medium layout, as users download
# it: the published configs and tokenizer files (tests/fixtures/sd35-medium-published) with
# tiny random weights in the published dtypes and files, written by
# `tools/make_bench_model.py --tiny` (only the size keys of the configs shrunk). The tool is
# also held to being reproducible: two runs give the same bytes. Needs the Python environment
# of `make deps` (numpy): $PYTHON, default build/pyenv/bin/python.
# Run from the repository root: tests/cli/test_published.sh [path/to/focus-run]
set -u
RUN=${1:-${BUILD:-build}/focus-run}
PYTHON=${PYTHON:-build/pyenv/bin/python}
. tests/cli/harness.sh
trap 'rm -rf "$TMP"' EXIT

npy_shape() { head -c 128 "$1" | LC_ALL=C tr -cd '[:print:]' | LC_ALL=C sed -n "s/.*'shape': \(([^)]*)\).*/\1/p"; }

M=$TMP/sd35
expect 0 "make_bench_model.py --tiny" -- "$PYTHON" tools/make_bench_model.py --tiny "$M"
expect 0 "a second run" -- "$PYTHON" tools/make_bench_model.py --tiny "$TMP/again"
check "the two runs write the same bytes" diff -r "$M" "$TMP/again"
check "T5 is in the two published shards" test -s "$M/text_encoder_3/model-00001-of-00002.safetensors" \
    -a -s "$M/text_encoder_3/model-00002-of-00002.safetensors" \
    -a -s "$M/text_encoder_3/model.safetensors.index.json"
check "the tokenizers are the published bytes" diff -r tests/fixtures/sd35-medium-published/tokenizer_3 "$M/tokenizer_3"

expect 0 "tokenize with the published tokenizers" -- "$RUN" tokenize --model "$M" "a<extra_id_0> cat"
check "T5 reads the added token" grep -q "^t5: 3 9 32099 1712 1 0" "$TMP/out"
expect 0 "encode" -- "$RUN" encode --model "$M" --prompt "a cat" --max-seq 77 --dump "$TMP/d"
check "prompt_embeds shape" test "$(npy_shape "$TMP/d/prompt_embeds.npy")" = "(1, 154, 128)"
check "pooled shape (CLIP-L + CLIP-G projections)" test "$(npy_shape "$TMP/d/pooled.npy")" = "(1, 80)"
expect 0 "generate" -- "$RUN" generate --model "$M" --prompt "a cat" --steps 2 --width 64 \
    --height 64 -o "$TMP/g.png" --dump "$TMP/g"
check "generate writes a PNG" test -s "$TMP/g.png"
check "latents shape" test "$(npy_shape "$TMP/g/latents.npy")" = "(1, 16, 8, 8)"
check "the images are finite" "$PYTHON" -c 'import numpy, sys; sys.exit(not numpy.isfinite(numpy.load(sys.argv[1])).all())' "$TMP/g/image.npy"

echo "RESULT passed=$passed failed=$failed"
[ "$failed" -eq 0 ]
