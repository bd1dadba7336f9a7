#!/bin/sh
# Regenerate tests/fixtures/tiny-sd35-real (the published SD3.5 tokenizer files, tiny text encoders)
# and its goldens (tests/fixtures/golden/real_tokenizer, real_encode). Needs python3 (3.11 was used),
# PyPI, and a directory with the published files (default: ../shared/real-sd35 beside the repository;
# or give it as $1). Creates tools/reference/.venv/real on first use; REF_REAL_VENV reuses another.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=$(realpath -m "${REF_REAL_VENV:-$here/.venv/real}")
src=$(realpath -m "${1:-$here/../../../shared/real-sd35}")
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --upgrade pip
    "$venv/bin/pip" install -r "$here/requirements-real.txt"
fi
if "$venv/bin/python" -c "import ftfy" 2>/dev/null; then
    echo "run_real.sh: ftfy is installed in $venv; the CLIP goldens assume it is absent" >&2
    exit 1
fi
cd "$here"
"$venv/bin/python" gen_real.py "$src"
"$venv/bin/python" gen_real_model.py "$src"
