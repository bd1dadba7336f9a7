#!/bin/sh
# Installs the Debian packages that focusd's build and tests need. Idempotent: when every
# package is present it only asks dpkg and returns.
set -eu
PACKAGES="make gcc pkg-config python3 python3-venv
libjansson-dev libutf8proc-dev libpcre2-dev libopenblas-dev libpng-dev
libzmq3-dev libmsgpack-dev libsystemd-dev libsqlite3-dev mandoc"

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
        missing="$missing $p"
done
[ -z "$missing" ] && exit 0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "installing:$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
