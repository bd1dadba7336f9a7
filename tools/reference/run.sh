#!/bin/sh
# Regenerate the fixture model (tests/fixtures/tiny-sd35) and every golden (tests/fixtures/golden)
# from scratch.  Needs python3 (3.11 was used) and PyPI; creates tools/reference/.venv on first use.
# Set REF_VENV to reuse another virtual environment with the same pinned packages.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=${REF_VENV:-$here/.venv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --upgrade pip
    "$venv/bin/pip" install -r "$here/requirements.txt"
fi
if "$venv/bin/python" -c "import ftfy" 2>/dev/null; then
    echo "run.sh: ftfy is installed in $venv; the CLIP goldens assume it is absent" >&2
    exit 1
fi
# OpenAI's CLIP BPE merges ship inside the open_clip_torch wheel; the package itself is never imported.
wheels=$here/.venv/wheels
wheel=$wheels/open_clip_torch-3.3.0-py3-none-any.whl
if [ ! -f "$wheel" ]; then
    "$venv/bin/pip" download --no-deps --dest "$wheels" open_clip_torch==3.3.0
fi
cd "$here"
"$venv/bin/python" gen_tokenizers.py "$wheel"
"$venv/bin/python" gen_model.py
"$venv/bin/python" gen_goldens.py
