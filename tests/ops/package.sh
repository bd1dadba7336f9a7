#!/usr/bin/env bash
# The Debian packages, end to end: builds focusd and focus-client with dpkg-buildpackage from
# a copy of the source tree (so that the build's `make clean` cannot touch the working tree),
# checks what each package holds, installs both with dpkg -i on this machine, starts the
# installed daemon by hand as the user focusd, and pings it with the installed client. Then it
# purges the packages; the user and groups that the postinst created stay, as Debian policy
# keeps them. Slow (a full build) and it changes the machine: run it as root on a throwaway
# machine such as CI's, not from `make test`.
#
# Prints one "ok NAME" or "FAIL NAME: why" line per check and ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/../.." || exit 1
SRC=$PWD

. tests/ops/harness.bash

if [ "$(id -u)" -ne 0 ]; then
    fail "setup" "dpkg -i needs root"
    finish
fi
for tool in dpkg-buildpackage dh dh_installsysusers; do
    if ! command -v "$tool" > /dev/null; then
        fail "setup" "$tool is missing: apt-get install dpkg-dev debhelper fakeroot"
        finish
    fi
done
if dpkg-query -W -f='${Status}' focusd 2>/dev/null | grep -q 'ok installed'; then
    fail "setup" "a focusd package is installed already; this test would replace and purge it"
    finish
fi

T=$(mktemp -d)
daemon=
# The directories the package's tmpfiles.d entry creates; removed again where they are new.
created=
for d in /run/focusd /var/lib/focusd /var/cache/focusd; do
    [ -e "$d" ] || created="$created $d"
done
cleanup() {
    [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
    dpkg --purge focusd focus-client > /dev/null 2>&1
    rm -rf "$T" $created
}
trap cleanup EXIT

# The tracked and the new (not ignored) files, as the next commit will have them.
version=$(dpkg-parsechangelog -l debian/changelog -S Version)
tree=$T/focusd-$version
mkdir -p "$tree"
git ls-files -co --exclude-standard -z | tar --null -cf - -T - | tar -xf - -C "$tree"
if ! grep -q '^include install.mk' "$tree/Makefile"; then
    fail "the Makefile includes install.mk" "added to the copy so that the rest can run"
    echo 'include install.mk' >> "$tree/Makefile"
fi

echo "   building the packages (dpkg-buildpackage -us -uc -b), log in $T/build.log"
if (cd "$tree" && DEB_BUILD_OPTIONS="nocheck parallel=$(nproc)" \
    dpkg-buildpackage -us -uc -b > "$T/build.log" 2>&1); then
    ok "dpkg-buildpackage -us -uc -b"
else
    fail "dpkg-buildpackage -us -uc -b" "$(tail -n 15 "$T/build.log")"
    finish
fi
arch=$(dpkg --print-architecture)
deb_d=$T/focusd_${version}_$arch.deb
deb_c=$T/focus-client_${version}_$arch.deb
check "both packages built" "$(ls "$T")" test -f "$deb_d" -a -f "$deb_c"

unitdir=$(pkg-config --variable=systemdsystemunitdir systemd)
contents_d=$(dpkg-deb -c "$deb_d" | awk '{ print $6 }' | sed 's|^\.||')
contents_c=$(dpkg-deb -c "$deb_c" | awk '{ print $6 }' | sed 's|^\.||')
missing=
for f in /usr/sbin/focusd /usr/bin/focus-run /etc/focusd/focusd.conf \
    "$unitdir/focusd.service" "$unitdir/focusd.socket" "$unitdir/focusd-nvidia.service" \
    /usr/lib/sysusers.d/focusd.conf /usr/lib/tmpfiles.d/focusd.conf \
    /usr/share/man/man8/focusd.8.gz /usr/share/man/man5/focusd.conf.5.gz; do
    grep -qx "$f" <<< "$contents_d" || missing="$missing $f"
done
check "focusd holds the daemon, units, sysusers/tmpfiles entries, config, pages" \
    "missing:$missing" test -z "$missing"
missing=
for f in /usr/bin/focus /usr/share/bash-completion/completions/focus \
    /usr/share/man/man1/focus.1.gz; do
    grep -qx "$f" <<< "$contents_c" || missing="$missing $f"
done
check "focus-client holds focus, its completion and focus(1)" "missing:$missing" \
    test -z "$missing"
check "focus-client does not hold the daemon" "it does" \
    test -z "$(grep 'focusd$' <<< "$contents_c")"
dpkg-deb -e "$deb_d" "$T/ctl"
check "focusd's configuration is a conffile" "conffiles: $(cat "$T/ctl/conffiles" 2>&1)" \
    grep -qx /etc/focusd/focusd.conf "$T/ctl/conffiles"
check "focusd's postinst creates the user and enables the units" \
    "$(cat "$T/ctl/postinst" 2>/dev/null)" \
    sh -c "grep -q systemd-sysusers '$T/ctl/postinst' &&
           grep -q 'deb-systemd-helper.*focusd.socket' '$T/ctl/postinst'"

if dpkg -i "$deb_d" "$deb_c" > "$T/install.log" 2>&1; then
    ok "dpkg -i focusd focus-client"
else
    fail "dpkg -i focusd focus-client" "$(tail -n 10 "$T/install.log")"
    finish
fi
check "postinst: user focusd, group focus" "$(getent passwd focusd) $(getent group focus)" \
    sh -c 'getent passwd focusd > /dev/null && getent group focus > /dev/null'
check "postinst: /run/focusd and /var/lib/focusd belong to focusd" \
    "$(stat -c '%n %U' /run/focusd /var/lib/focusd 2>&1)" \
    test "$(stat -c %U /run/focusd /var/lib/focusd 2>/dev/null | sort -u)" = focusd
check "installed focus-client: focus --version" "$(focus --version 2>&1)" \
    sh -c 'focus --version | grep -q "^focus "'

# The installed daemon as the unit would run it (user, configuration file, socket), serving
# the small fixture model from a directory the user focusd can read, with a fresh state.
cp -r "$SRC/tests/fixtures/tiny-sd35" "$T/model"
chmod -R a+rX "$T"
install -d -o focusd -g focusd "$T/state"
# setpriv executes focusd in its own process (runuser would stay as a parent), so that the
# signal below reaches focusd and its exit status is focusd's.
setpriv --reuid=focusd --regid=focusd --init-groups \
    /usr/sbin/focusd -c /etc/focusd/focusd.conf -m "tiny=$T/model" -d cpu -s "$T/state" \
    > "$T/focusd.log" 2>&1 &
daemon=$!
for _ in $(seq 300); do [ -S /run/focusd/focusd.sock ] && break; sleep 0.1; done
if focus --timeout 60 ping > "$T/ping.out" 2>&1; then
    ok "focus ping against the installed daemon on /run/focusd/focusd.sock"
else
    fail "focus ping against the installed daemon on /run/focusd/focusd.sock" \
        "$(cat "$T/ping.out"); daemon: $(tail -n 5 "$T/focusd.log")"
fi
check "focus models lists the model" "$(focus models 2>&1)" \
    sh -c 'focus models | grep -q tiny'
kill -TERM "$daemon" 2>/dev/null
rc=0
wait "$daemon" || rc=$?
daemon=
check "the installed daemon stops cleanly on SIGTERM" "exit status $rc" test "$rc" -eq 0

dpkg --purge focusd focus-client > "$T/purge.log" 2>&1
check "dpkg --purge removes the programs and the configuration" \
    "$(ls /usr/sbin/focusd /usr/bin/focus /etc/focusd 2>&1)" \
    sh -c '! [ -e /usr/sbin/focusd ] && ! [ -e /usr/bin/focus ] && ! [ -e /etc/focusd ]'
finish
