#!/usr/bin/env bash
# The Debian packages, end to end: builds focusd (daemon and engine), focus-client (the focus
# command) and python3-focusd-client (the Python module) with dpkg-buildpackage from a copy of
# the source tree (so that the build's `make clean` cannot touch the working tree), checks what
# each package holds and depends on, installs the three with dpkg -i on this machine, starts the
# installed daemon by hand as the user focusd, and talks to it with the installed client and the
# installed Python module (the system's python3, with the module's dependencies installed by
# make deps). Then it purges the packages; the user and groups that the postinst created stay, as Debian policy
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

packages="focusd focus-client python3-focusd-client"
T=$(mktemp -d)
daemon=
# The directories the package's tmpfiles.d entry creates; removed again where they are new.
created=
for d in /run/focusd /var/lib/focusd /var/cache/focusd; do
    [ -e "$d" ] || created="$created $d"
done
cleanup() {
    [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
    dpkg --purge $packages > /dev/null 2>&1
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
deb_p=$T/python3-focusd-client_${version}_all.deb
check "the three packages built" "$(ls "$T")" test -f "$deb_d" -a -f "$deb_c" -a -f "$deb_p"

unitdir=$(pkg-config --variable=systemdsystemunitdir systemd)
contents_d=$(dpkg-deb -c "$deb_d" | awk '{ print $6 }' | sed 's|^\.||')
contents_c=$(dpkg-deb -c "$deb_c" | awk '{ print $6 }' | sed 's|^\.||')
contents_p=$(dpkg-deb -c "$deb_p" | awk '{ print $6 }' | sed 's|^\.||')
missing=
for f in /usr/sbin/focusd /usr/bin/focus-run /etc/focusd/focusd.conf \
    "$unitdir/focusd.service" "$unitdir/focusd.socket" "$unitdir/focusd-nvidia.service" \
    /usr/lib/sysusers.d/focusd.conf /usr/lib/tmpfiles.d/focusd.conf \
    /usr/share/man/man8/focusd.8.gz /usr/share/man/man5/focusd.conf.5.gz \
    /usr/share/man/man1/focus-run.1.gz /usr/share/man/man7/focusd-protocol.7.gz; do
    grep -qx "$f" <<< "$contents_d" || missing="$missing $f"
done
check "focusd holds the daemon, focus-run, units, sysusers/tmpfiles entries, config, pages" \
    "missing:$missing" test -z "$missing"
check "focusd does not hold the client or the Python module" "it does" \
    test -z "$(grep -E '/usr/bin/focus$|focusd_client' <<< "$contents_d")"
missing=
for f in /usr/bin/focus /usr/share/bash-completion/completions/focus \
    /usr/share/man/man1/focus.1.gz; do
    grep -qx "$f" <<< "$contents_c" || missing="$missing $f"
done
check "focus-client holds focus, its completion and focus(1)" "missing:$missing" \
    test -z "$missing"
check "focus-client holds nothing of the daemon, the engine or the module" \
    "$(grep -E 'focusd|focus-run|systemd/system|python' <<< "$contents_c")" \
    test -z "$(grep -E 'focusd|focus-run|systemd/system|python' <<< "$contents_c")"
missing=
for f in /usr/lib/python3/dist-packages/focusd_client.py \
    /usr/share/doc/python3-focusd-client/examples/example.py; do
    grep -qx "$f" <<< "$contents_p" || missing="$missing $f"
done
check "python3-focusd-client holds the module and its example" "missing:$missing" \
    test -z "$missing"
check "python3-focusd-client holds no program" "$(grep '/bin/' <<< "$contents_p")" \
    test -z "$(grep '/bin/' <<< "$contents_p")"

# What each package depends on: the libraries of what it holds, and nothing of the others'.
# depends DEB: the package's Depends field, one package name a line.
depends() { dpkg-deb -f "$1" Depends | tr ',|' '\n\n' | sed 's/^ *//; s/[ :(].*//' | sort -u; }
deps_d=$(depends "$deb_d")
deps_c=$(depends "$deb_c")
deps_p=$(depends "$deb_p")
missing=
for d in libzmq5 libmsgpackc2 libsqlite3-0 libpq5 libsystemd0 libpng16-16 libdnnl2 libjansson4; do
    grep -q "^$d" <<< "$deps_d" || missing="$missing $d"
done
check "focusd depends on the libraries of the daemon and the engine" \
    "missing:$missing; Depends: $(echo $deps_d)" test -z "$missing"
missing=
for d in libzmq5 libmsgpackc2 libjansson4; do
    grep -qx "$d" <<< "$deps_c" || missing="$missing $d"
done
check "focus-client depends on libzmq5, libmsgpackc2 and libjansson4" \
    "missing:$missing; Depends: $(echo $deps_c)" test -z "$missing"
check "focus-client depends on nothing of the engine or the daemon" "Depends: $(echo $deps_c)" \
    test -z "$(grep -E 'openblas|sqlite|libpq|systemd|png|pcre|cuda|cublas|dnnl|focusd' <<< "$deps_c")"
arch_p=$(dpkg-deb -f "$deb_p" Architecture)
check "python3-focusd-client: architecture all, depends on python3, python3-zmq, python3-msgpack" \
    "Architecture: $arch_p; Depends: $(echo $deps_p)" \
    test "$arch_p $(echo $(grep -E '^python3(-zmq|-msgpack)?$' <<< "$deps_p"))" = \
    "all python3 python3-msgpack python3-zmq"
dpkg-deb -e "$deb_d" "$T/ctl"
check "focusd's configuration is a conffile" "conffiles: $(cat "$T/ctl/conffiles" 2>&1)" \
    grep -qx /etc/focusd/focusd.conf "$T/ctl/conffiles"
check "focusd's postinst creates the user and enables the units" \
    "$(cat "$T/ctl/postinst" 2>/dev/null)" \
    sh -c "grep -q systemd-sysusers '$T/ctl/postinst' &&
           grep -q 'deb-systemd-helper.*focusd.socket' '$T/ctl/postinst'"

if dpkg -i "$deb_d" "$deb_c" "$deb_p" > "$T/install.log" 2>&1; then
    ok "dpkg -i $packages"
else
    fail "dpkg -i $packages" "$(tail -n 10 "$T/install.log")"
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
# The installed module, from outside the source tree, with the system's Python: one small job.
cat > "$T/job.py" << 'EOF'
import sys, time
from focusd_client import Client
with Client("ipc:///run/focusd/focusd.sock", timeout=120) as c:
    # The socket answers at once; jobs are taken once the model is resident.
    for _ in range(600):
        if all(m["loaded"] for m in c.models()):
            break
        time.sleep(0.1)
    job = c.submit("a red fox", width=64, height=64, steps=2, seed=1, watch=True)
    for ev in c.events(job, timeout=120):
        if ev["event"] in ("done", "failed", "canceled"):
            break
    sys.stdout.buffer.write(c.fetch(job)["png"])
EOF
(cd / && /usr/bin/python3 "$T/job.py" > "$T/job.png" 2> "$T/job.err")
check "the installed Python module submits a job and fetches its PNG" \
    "$(cat "$T/job.err")" sh -c "head -c 4 '$T/job.png' | od -An -c | grep -q 'P   N   G'"
kill -TERM "$daemon" 2>/dev/null
rc=0
wait "$daemon" || rc=$?
daemon=
check "the installed daemon stops cleanly on SIGTERM" "exit status $rc" test "$rc" -eq 0

dpkg --purge $packages > "$T/purge.log" 2>&1
gone="/usr/sbin/focusd /usr/bin/focus /usr/lib/python3/dist-packages/focusd_client.py /etc/focusd"
check "dpkg --purge removes the programs, the module and the configuration" \
    "$(ls -d $gone 2>&1)" sh -c "! ls -d $gone > /dev/null 2>&1"
finish
