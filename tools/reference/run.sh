#!/bin/sh
# Regenerate the fixture model (tests/fixtures/tiny-sd35) and every golden (tests/fixtures/golden)
# from scratch.  Needs python3 (3.11 was used) and PyPI; creates tools/reference/.venv on first use,
# and tools/reference/.venv/slg (the same packages with requirements-slg.txt's diffusers) for gen_slg.py.
# Set REF_VENV and REF_SLG_VENV to reuse other virtual environments holding those packages.
# With FOCUS_SRC set to a checkout of the authors' FOCUS repository, gen_focus.py runs once more in
# tools/reference/.venv/focus (requirements-focus.txt on top; REF_FOCUS_VENV to reuse another) and checks
# its goldens against their code.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=${REF_VENV:-$here/.venv}
slg_venv=${REF_SLG_VENV:-$here/.venv/slg}
focus_venv=${REF_FOCUS_VENV:-$here/.venv/focus}
setup() {  # $1: venv directory; $2: optional file of pins installed on top with --no-deps
    if [ ! -x "$1/bin/python" ]; then
        python3 -m venv "$1"
        "$1/bin/pip" install --upgrade pip
        "$1/bin/pip" install -r "$here/requirements.txt"
        if [ -n "${2:-}" ]; then
            "$1/bin/pip" install --no-deps -r "$2"
        fi
    fi
    if "$1/bin/python" -c "import ftfy" 2>/dev/null; then
        echo "run.sh: ftfy is installed in $1; the CLIP goldens assume it is absent" >&2
        exit 1
    fi
}
setup "$venv"
setup "$slg_venv" "$here/requirements-slg.txt"
if [ -n "${FOCUS_SRC:-}" ]; then
    setup "$focus_venv" "$here/requirements-focus.txt"
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
FOCUS_SRC= "$venv/bin/python" gen_focus.py  # the goldens; the check below needs the focus environment
if [ -n "${FOCUS_SRC:-}" ]; then
    "$focus_venv/bin/python" gen_focus.py
fi
"$slg_venv/bin/python" gen_slg.py
