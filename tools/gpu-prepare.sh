#!/bin/sh
# Carries focusd's build and runtime libraries to a GPU machine that lacks them (and has no
# network), as Debian packages unpacked into a private folder instead of installed.
#
#   tools/gpu-prepare.sh download   on a Debian 12 machine with apt: fetches the .deb files of
#                                   the libraries the Makefile's pkg-config line names, their
#                                   -dev packages and their dependencies into .gpudeps/debs
#   tools/gpu-prepare.sh unpack     on the GPU machine: unpacks them into .gpudeps/root and
#                                   writes .gpudeps/env.sh, which points PKG_CONFIG_PATH,
#                                   PKG_CONFIG_SYSROOT_DIR and LD_LIBRARY_PATH there
#
# Then `. .gpudeps/env.sh && make -j16 && make test-gpu` (tests/gpu/README.md has the whole
# sequence). The C library, compiler and CUDA toolkit are the GPU machine's own and are not
# carried; neither are packages that only the C++ bindings or alternative BLAS builds need.
set -eu

DIR=${GPUDEPS:-.gpudeps}
DEV_PACKAGES="libjansson-dev libutf8proc-dev libpcre2-dev libopenblas-dev libopenblas-pthread-dev
libpng-dev libzmq3-dev libmsgpack-dev libsystemd-dev libsqlite3-dev libmd-dev"
# The toolchain and C library (present wherever nvcc is), the other OpenBLAS variants, and the
# C++ msgpack's Boost dependency.
SKIP='^(gcc-.*|cpp.*|libc6|libc6-dev|libc-dev-bin|libgcc-.*|libstdc\+\+.*|libasan.*|libatomic.*|libitm.*|liblsan.*|libtsan.*|libubsan.*|libquadmath.*|libgomp.*|libcrypt.*|libnsl.*|libtirpc.*|rpcsvc-proto|linux-libc-dev|libopenblas0-openmp|libopenblas0-serial|libopenblas-openmp-dev|libopenblas-serial-dev|libboost.*)$'

download() {
    mkdir -p "$DIR/debs"
    pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances $DEV_PACKAGES | grep -v '^[ <]' | sort -u | grep -Ev "$SKIP")
    (cd "$DIR/debs" && apt-get download $pkgs)
    echo "$(ls "$DIR/debs" | wc -l) packages, $(du -sh "$DIR/debs" | cut -f1) in $DIR/debs"
}

unpack() {
    root=$(cd "$DIR" && pwd)/root
    rm -rf "$root"
    mkdir -p "$root"
    for deb in "$DIR"/debs/*.deb; do
        if command -v dpkg-deb >/dev/null; then
            dpkg-deb -x "$deb" "$root"
        else # no dpkg: a .deb is an ar archive holding data.tar.*
            tmp=$(mktemp -d)
            (cd "$tmp" && ar x "$(cd - >/dev/null && realpath "$deb")")
            tar -xf "$tmp"/data.tar.* -C "$root"
            rm -rf "$tmp"
        fi
    done
    # dpkg-deb -x runs no maintainer scripts, so the alternatives link that names OpenBLAS as
    # the system BLAS is missing; the linker finds it through openblas.pc and this path.
    lib="$root/usr/lib/x86_64-linux-gnu"
    cat >"$DIR/env.sh" <<EOF
# Source this file (. $DIR/env.sh) before make: pkg-config and the loader use $root.
export PKG_CONFIG_SYSROOT_DIR="$root"
export PKG_CONFIG_PATH="$lib/pkgconfig:$root/usr/share/pkgconfig"
export LD_LIBRARY_PATH="$lib:$lib/openblas-pthread:$root/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
EOF
    echo "unpacked into $root; now: . $DIR/env.sh"
}

case "${1:-}" in
download) download ;;
unpack) unpack ;;
*)
    echo "usage: $0 download|unpack" >&2
    exit 2
    ;;
esac
