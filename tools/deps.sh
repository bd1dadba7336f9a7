#!/bin/sh
# Installs the Debian packages that focusd's build and tests need, and the Python environment
# of the integration tests (build/pyenv). Idempotent: when everything is present it only asks
# dpkg and Python, and returns.
set -eu
# postgresql: the server the integration tests start for the shared job store. The last line:
# what the Debian packages' build (dh-python) and the Python module's package
# (tests/ops/package.sh installs it) need.
PACKAGES="make gcc pkg-config python3 python3-venv
libjansson-dev libutf8proc-dev libpcre2-dev libopenblas-dev libdnnl-dev libpng-dev
libzmq3-dev libmsgpack-dev libsystemd-dev libsqlite3-dev libpq-dev libmd-dev mandoc
clang-14 libclang-rt-14-dev systemd bash-completion debhelper dpkg-dev fakeroot patchelf postgresql
dh-python python3-zmq python3-msgpack"

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
        missing="$missing $p"
done
if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    echo "installing:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

# The integration tests and the Python client run in their own environment under build/.
PYENV=build/pyenv
PYPKGS="pyzmq msgpack pytest numpy"
if ! "$PYENV/bin/python" -c "import zmq, msgpack, pytest, numpy" 2>/dev/null; then
    python3 -m venv "$PYENV"
    "$PYENV/bin/pip" install -q $PYPKGS
fi
