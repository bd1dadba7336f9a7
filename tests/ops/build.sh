#!/usr/bin/env bash
# The build as a new user and a packager meet it. The layer rule of the architecture, read
# from the sources' includes (client -> protocol, daemon -> protocol and engine, engine ->
# kernels; CUDA headers only in kernels/cuda/). Then the README's first command on a fresh
# machine: in a copy of the tree, with a pkg-config that finds nothing until `make deps` has
# run (as on a machine where deps installs the -dev packages), `make demo` must build and run
# the first time. The programs built there, linked with --no-as-needed, must need only
# libraries that each give them a symbol they use, and building `focus` alone must compile
# nothing of engine/ or kernels/. The copy builds without CUDA, to keep the cost to about one
# build of the programs.
#
# Prints one "ok NAME" or "FAIL NAME: why" line per check and ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/../.." || exit 1
SRC=$PWD

. tests/ops/harness.bash

# ---- the layers: what each directory may include from the others ----
# layer_violations DIR ALLOWED...: the includes of project headers under DIR whose directory is
# neither DIR itself nor one of ALLOWED (each "dir/" or "dir/file.h").
layer_violations() {
    local dir=$1 inc ok a
    shift
    grep -rHoE '^#include "[^"]+"' "$dir" --include='*.c' --include='*.h' --include='*.cu' |
        while IFS=: read -r file line; do
            inc=${line#*\"}
            inc=${inc%\"}
            ok=
            for a in "$dir/" "$@"; do
                case $inc in "$a"*) ok=1 ;; esac
            done
            [ -n "$ok" ] || echo "$file: $inc"
        done
}
check_layer() { # check_layer DIR ALLOWED...
    local bad
    bad=$(layer_violations "$@")
    check "$1/ includes only ${*:2}" "$(echo "$bad" | head -n 5)" test -z "$bad"
}
check_layer common
check_layer protocol common/
check_layer client common/ protocol/
check_layer daemon common/ protocol/ engine/
check_layer engine common/ kernels/kn.h kernels/kn_ops.h kernels/kn_image.h kernels/kn_patch.h \
    kernels/kn_convert.h kernels/kn_grad.h
check_layer kernels common/
cuda=$(grep -rlE '^#include <(cuda|cublas|curand|cufft|nvrtc)[^>]*>' common protocol client \
    daemon engine kernels --include='*.c' --include='*.h' --include='*.cu' | grep -v '^kernels/cuda/')
check "no CUDA header outside kernels/cuda/" "$cuda" test -z "$cuda"

# ---- the first run ----
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
real_pc=$(command -v pkg-config)
if [ -z "$real_pc" ] || ! [ -x "$SRC/build/pyenv/bin/python" ]; then
    fail "first run: setup" "needs pkg-config and build/pyenv: run make deps"
    finish
fi
tree=$T/src
mkdir -p "$tree/build" "$T/bin"
git ls-files -co --exclude-standard -z | tar --null -cf - -T - | tar -xf - -C "$tree"
# The Python environment that deps would otherwise fetch from the network.
ln -s "$SRC/build/pyenv" "$tree/build/pyenv"
# deps runs as it is, and marks that it has finished.
mv "$tree/tools/deps.sh" "$tree/tools/deps-real.sh"
printf '#!/bin/sh\nsh tools/deps-real.sh && touch "%s"\n' "$T/deps-ran" > "$tree/tools/deps.sh"
chmod +x "$tree/tools/deps.sh"
# Until then, pkg-config knows no package, as on a machine without the -dev packages.
cat > "$T/bin/pkg-config" << EOF
#!/bin/sh
if ! [ -e "$T/deps-ran" ]; then
    echo "\$*" >> "$T/pkg-config-before-deps"
    exit 1
fi
exec "$real_pc" "\$@"
EOF
chmod +x "$T/bin/pkg-config"
# make as a user types it: nothing from a make or a test run above this one.
user_make() { # user_make LOG ARGS...
    local log=$1
    shift
    (cd "$tree" && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u BUILD -u SANITIZE \
        PATH="$T/bin:$PATH" make -j"$(nproc)" NVCC= "$@") > "$log" 2>&1
}

user_make "$T/early.log" build/focus
rc=$?
objects=$(find "$tree/build" -name '*.o' | head -n 3)
check "before deps, a build stops before compiling and says to run make deps" \
    "status $rc, objects: $objects; $(tail -n 3 "$T/early.log")" \
    sh -c "[ $rc -ne 0 ] && [ -z '$objects' ] && grep -q 'make deps installs them' '$T/early.log'"
rm -f "$T/pkg-config-before-deps"

echo "   make demo in a fresh copy (log in $T/demo.log)"
if user_make "$T/demo.log" demo LDFLAGS=-Wl,--no-as-needed DEMO_OUT="$T/demo.png"; then
    ok "the first make demo builds, links and writes the image"
else
    fail "the first make demo builds, links and writes the image" "$(tail -n 15 "$T/demo.log")"
fi
check "make demo read pkg-config before deps had run (the case under test)" \
    "pkg-config was not asked before deps" test -s "$T/pkg-config-before-deps"
check "demo.png is a PNG" "$(head -c 8 "$T/demo.png" 2>&1 | od -c | head -n 1)" \
    sh -c "head -c 8 '$T/demo.png' | od -An -tx1 | grep -q '89 50 4e 47 0d 0a 1a 0a'"

# unused_needed PROGRAM: the libraries PROGRAM needs (NEEDED) that define none of the symbols
# it imports: what a link line names beyond what the program uses.
unused_needed() {
    local prog=$1 imports lib path
    imports=$(nm -D --undefined-only "$prog" | awk '{ print $NF }' | sed 's/@.*//' | sort -u)
    for lib in $(readelf -d "$prog" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
        path=$(ldd "$prog" | awk -v l="$lib" '$1 == l && $2 == "=>" { print $3 }')
        nm -D --defined-only "$path" 2> /dev/null | awk '{ print $NF }' | sed 's/@.*//' |
            sort -u | comm -12 - <(printf '%s\n' "$imports") | grep -q . || echo "$lib"
    done
}
for p in focus focusd focus-run; do
    if [ -x "$tree/build/$p" ]; then
        extra=$(unused_needed "$tree/build/$p")
        check "$p, linked with --no-as-needed, needs only libraries it uses" \
            "unused: $extra" test -z "$extra"
    else
        fail "$p, linked with --no-as-needed, needs only libraries it uses" "not built"
    fi
done
needed=$(readelf -d "$tree/build/focus" 2>&1 | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
check "focus needs none of the engine's or the daemon's libraries" "$(echo $needed)" \
    sh -c "! echo '$needed' | grep -Eq 'openblas|sqlite|systemd|png|pcre|cuda|cublas|dnnl'"

user_make "$T/client.log" BUILD=build-client build-client/focus
rc=$?
built=$(cd "$tree/build-client" 2> /dev/null && find . -name '*.o' | cut -d/ -f2 | sort -u)
check "make build/focus compiles client/, protocol/ and common/ alone" \
    "status $rc, compiled under: $(echo $built)" \
    test "$rc" -eq 0 -a "$(echo $built)" = "client common protocol"
finish
