#!/usr/bin/env bash
# Operations tests: what an administrator relies on when installing and running focusd. The
# man pages against the programs' --help and the daemon's configuration keys, mandoc lint,
# `make install`/`make uninstall` into scratch trees, systemd-analyze verify and security on
# the installed units, sysusers.d and tmpfiles.d applied to a scratch root, the bash
# completion against --help, and socket activation with a real client round trip. Not the
# Debian package: tests/ops/package.sh builds and installs that (slow).
#
# Prints one "ok NAME" or "FAIL NAME: why" line per check and ends with "N passed, N failed".
# Run from anywhere; BUILD (default build) names the build directory.
set -u
cd "$(dirname "$0")/../.." || exit 1
BUILD=${BUILD:-build}
MAKE=${MAKE:-make}
FOCUSD=$BUILD/focusd
FOCUS=$BUILD/focus
# The highest systemd-analyze security exposure accepted for focusd.service (0 is a sealed
# box, 10 no sandbox). The unit scores 1.7: what is left open is what CUDA and the network
# endpoint need (devices, netlink, @resources, the host's network and users). 2.0 leaves room
# for one such need more; anything past it must come with a reason and a change here.
MAX_EXPOSURE=2.0
# A model small enough to load in a second on the CPU.
MODEL=tests/fixtures/tiny-sd35

. tests/ops/harness.bash

T=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT

# run_section FUNCTION FILE...: runs FUNCTION when every FILE exists, else fails once naming
# what is missing (a program not built: run make first).
run_section() {
    local f=$1 missing=
    shift
    for need in "$@"; do [ -e "$need" ] || missing="$missing $need"; done
    if [ -n "$missing" ]; then
        fail "$f" "needs$missing (run make first)"
    else
        "$f"
    fi
}

# `make install` needs install.mk; it is included by the Makefile, or named here until it is.
make_install() {
    if grep -q '^include install.mk' Makefile; then
        "$MAKE" -s --no-print-directory BUILD="$BUILD" "$@"
    else
        "$MAKE" -s --no-print-directory -f Makefile -f install.mk BUILD="$BUILD" "$@"
    fi
}

# ---- man pages against --help ----

# Options named by a --help text on stdin, one a line: "-c" and "--config" from
# "  -c, --config FILE   what it does".
help_opts() {
    sed -n 's/^ \{1,\}\(-[A-Za-z0-9-].*\)$/\1/p' | sed 's/  .*//' | tr ',' '\n' |
        awk '$1 ~ /^-/ { print $1 }' | sort -u
}
# The option lines of the --help section that starts with a line beginning HEADER.
help_section() {
    awk -v h="$1" 'index($0, h) == 1 { on = 1; next } /^$/ { on = 0 } on'
}
# Options listed as ".It Fl ..." in section SECTION of mdoc page FILE; with CMD, only those
# under the ".It Cm CMD" item of that section.
man_opts() {
    awk -v sec="$2" -v cmd="${3-}" '
        /^\.Sh / { insec = (substr($0, 5) == sec); cur = ""; next }
        !insec { next }
        /^\.It Cm / { cur = $3; next }
        /^\.It Fl / {
            if (cmd != "" && cur != cmd) next
            for (i = 2; i < NF; i++)
                if ($i == "Fl") {
                    f = $(i + 1)
                    gsub(/\\/, "", f)
                    print "-" f
                }
        }' "$1" | sort -u
}
man_cmds() {
    awk '/^\.Sh / { insec = ($0 == ".Sh COMMANDS") } insec && /^\.It Cm / { print $3 }' "$1" |
        sort -u
}
# same NAME A B [WHAT_A WHAT_B]: ok when the two lists are equal, else FAIL naming what
# each lacks.
same() {
    local name=$1 a=$2 b=$3 only_a only_b
    only_a=$(comm -23 <(printf '%s\n' "$a" | sed '/^$/d') <(printf '%s\n' "$b" | sed '/^$/d'))
    only_b=$(comm -13 <(printf '%s\n' "$a" | sed '/^$/d') <(printf '%s\n' "$b" | sed '/^$/d'))
    if [ -z "$only_a$only_b" ]; then
        ok "$name"
    else
        fail "$name" "only in ${4:---help}: [$(echo $only_a)];" \
            "only in ${5:-the page}: [$(echo $only_b)]"
    fi
}
focus_cmds() {
    "$FOCUS" --help | help_section 'commands:' | awk '{ print $1 }' | sort -u
}

test_man_help() {
    local help_cmds c
    same "focusd(8) OPTIONS = focusd --help" "$("$FOCUSD" --help | help_opts)" \
        "$(man_opts man/focusd.8 OPTIONS)"
    same "focus(1) OPTIONS = focus --help global options" \
        "$("$FOCUS" --help | help_section 'global options' | help_opts)" \
        "$(man_opts man/focus.1 OPTIONS)"
    help_cmds=$(focus_cmds)
    same "focus(1) COMMANDS = focus --help commands" "$help_cmds" "$(man_cmds man/focus.1)"
    for c in $help_cmds; do
        same "focus(1) $c options = focus $c --help" \
            "$("$FOCUS" "$c" --help | help_section 'options:' | help_opts)" \
            "$(man_opts man/focus.1 COMMANDS "$c")"
    done
}

# ---- focusd.conf(5) against the keys the daemon accepts ----

# Keys documented as ".It Ic KEY" in section SECTION of focusd.conf(5).
man_keys() {
    awk -v sec="$1" '/^\.Sh / { insec = (substr($0, 5) == sec) }
        insec && /^\.It Ic / { print $3 }' man/focusd.conf.5 | sort -u
}
test_conf_keys() {
    # The daemon's table of top-level keys, and the keys the example configuration shows.
    local table_keys example_keys page_keys model_keys bad k
    table_keys=$(sed -n 's/^ *{"\([a-z_]*\)", K_.*/\1/p' daemon/config.c | sort -u)
    example_keys=$(sed -n 's/^[#;]\{0,1\} *\([a-z_][a-z_]*\) *=.*/\1/p' etc/focusd.conf | sort -u)
    page_keys=$(man_keys KEYS)
    same "focusd.conf(5) KEYS = daemon/config.c key table" "$table_keys" "$page_keys" \
        daemon/config.c "the page"
    model_keys=$(man_keys "MODEL SECTIONS")
    same "focusd.conf(5) keys = etc/focusd.conf keys" "$example_keys" \
        "$(printf '%s\n%s\n' "$page_keys" "$model_keys" | sort -u)" etc/focusd.conf "the page"
    # Every documented key is one focusd accepts: an unknown one fails before anything else.
    bad=
    for k in $page_keys; do
        "$FOCUSD" --set "$k=1" 2>&1 | grep -q 'unknown key' && bad="$bad $k"
    done
    # A default_model that names no model makes the file fail after every key is read, so
    # that focusd never starts serving here.
    for k in $model_keys; do
        printf 'default_model = none\n[model m]\npath = x\n%s = cpu\n' "$k" > "$T/model.conf"
        "$FOCUSD" --config "$T/model.conf" 2>&1 | grep -q 'unknown key' && bad="$bad [model] $k"
    done
    check "focusd accepts every key of focusd.conf(5)" "refused:$bad" test -z "$bad"
}

# ---- mandoc ----
test_mandoc() {
    local page lint
    for page in man/focus.1 man/focusd.8 man/focusd.conf.5; do
        # Whether a cross-referenced page is installed here says nothing about this one.
        lint=$(mandoc -Tlint "$page" 2>&1 |
            grep -v -e 'referenced manual not found' -e 'mandoc.db')
        check "mandoc -Tlint $page" "$lint" test -z "$lint"
    done
}

# ---- make install / uninstall ----
test_install() {
    local stage local_stage unitdir sysusersdir tmpfilesdir compdir expected got left
    check "the Makefile includes install.mk (make install, and debian/rules)" \
        "add the line 'include install.mk' to the Makefile" \
        grep -q '^include install.mk' Makefile

    # PREFIX=/usr into a DESTDIR, as a distribution package does.
    stage=$T/stage
    if make_install install DESTDIR="$stage" PREFIX=/usr > "$T/install.log" 2>&1; then
        ok "make install DESTDIR PREFIX=/usr"
    else
        fail "make install DESTDIR PREFIX=/usr" "$(tail -n 5 "$T/install.log")"
    fi
    pc() { pkg-config --variable="$2" "$1" 2>/dev/null; }
    unitdir=$(pc systemd systemdsystemunitdir)
    sysusersdir=$(pc systemd sysusersdir)
    tmpfilesdir=$(pc systemd tmpfilesdir)
    compdir=$(pkg-config --define-variable=datadir=/usr/share --variable=completionsdir \
        bash-completion 2>/dev/null)
    expected=$(printf '%s\n' /usr/sbin/focusd /usr/bin/focus /usr/bin/focus-run \
        /usr/share/man/man1/focus.1 /usr/share/man/man1/focus-run.1 \
        /usr/share/man/man5/focusd.conf.5 \
        /usr/share/man/man8/focusd.8 \
        "${unitdir:-/usr/lib/systemd/system}/focusd.service" \
        "${unitdir:-/usr/lib/systemd/system}/focusd.socket" \
        "${unitdir:-/usr/lib/systemd/system}/focusd-nvidia.service" \
        "${sysusersdir:-/usr/lib/sysusers.d}/focusd.conf" \
        "${tmpfilesdir:-/usr/lib/tmpfiles.d}/focusd.conf" \
        "${compdir:-/usr/share/bash-completion/completions}/focus" \
        /etc/focusd/focusd.conf)
    [ -e man/focusd-protocol.7 ] &&
        expected=$(printf '%s\n%s\n' "$expected" /usr/share/man/man7/focusd-protocol.7)
    got=$(cd "$stage" 2>/dev/null && find . -type f | sed 's|^\.||')
    same "installed file tree" "$(sort <<< "$expected")" "$(sort <<< "$got")" \
        "the expected tree" "the installed one"
    check "installed focusd.service runs /usr/sbin/focusd with /etc/focusd/focusd.conf" \
        "ExecStart is $(grep '^ExecStart=' "$stage$unitdir/focusd.service")" \
        grep -qx 'ExecStart=/usr/sbin/focusd --config /etc/focusd/focusd.conf' \
        "$stage$unitdir/focusd.service"
    check "installed focusd is executable" "mode $(stat -c %a "$stage/usr/sbin/focusd")" \
        test "$(stat -c %a "$stage/usr/sbin/focusd")" = 755
    echo '# edited' >> "$stage/etc/focusd/focusd.conf"
    make_install install DESTDIR="$stage" PREFIX=/usr > "$T/install2.log" 2>&1
    check "make install keeps an edited focusd.conf" "it was replaced" \
        grep -q '^# edited' "$stage/etc/focusd/focusd.conf"
    make_install uninstall DESTDIR="$stage" PREFIX=/usr > "$T/uninstall.log" 2>&1
    left=$(cd "$stage" && find . -type f | sed 's|^\.||')
    check "make uninstall removes all but the edited focusd.conf" "left: $(echo $left)" \
        test "$left" = /etc/focusd/focusd.conf

    # The default PREFIX=/usr/local: the units are rewritten to name its paths.
    local_stage=$T/local
    make_install install DESTDIR="$local_stage" > "$T/local.log" 2>&1
    check "PREFIX=/usr/local: focusd.service runs /usr/local/sbin/focusd" \
        "ExecStart is $(grep -s '^ExecStart=' "$local_stage$unitdir/focusd.service")" \
        grep -qx 'ExecStart=/usr/local/sbin/focusd --config /usr/local/etc/focusd/focusd.conf' \
        "$local_stage$unitdir/focusd.service"
    check "PREFIX=/usr/local: configuration in /usr/local/etc/focusd" "not there" \
        test -f "$local_stage/usr/local/etc/focusd/focusd.conf"
    make_install uninstall DESTDIR="$local_stage" > /dev/null 2>&1
    left=$(cd "$local_stage" && find . -type f)
    check "PREFIX=/usr/local: make uninstall removes everything" "left: $(echo $left)" \
        test -z "$left"
}

# ---- the units, installed to a prefix that exists here ----
test_units() {
    local root verify exposure

    # systemd-analyze verify checks that ExecStart= names an executable on this machine, so the
    # units are installed with the prefix pointing into the scratch directory.
    root=$T/root
    make_install install PREFIX="$root/usr" SYSCONFDIR="$root/etc" \
        SYSTEMDUNITDIR="$root/units" SYSUSERSDIR="$root/sysusers.d" \
        TMPFILESDIR="$root/tmpfiles.d" BASHCOMPDIR="$root/completions" > "$T/root.log" 2>&1
    verify=$(systemd-analyze verify --man=no "$root/units/focusd.service" \
        "$root/units/focusd.socket" "$root/units/focusd-nvidia.service" 2>&1)
    check "systemd-analyze verify focusd.service focusd.socket focusd-nvidia.service" \
        "$verify" test -z "$verify"
    exposure=$(systemd-analyze security --offline=true --no-pager "$root/units/focusd.service" \
        2>/dev/null | sed -n 's/.*Overall exposure level for focusd.service: \([0-9.]*\).*/\1/p')
    echo "   systemd-analyze security exposure of focusd.service: ${exposure:-unknown}"
    # oneDNN generates x86 kernels at run time, which MemoryDenyWriteExecute= forbids.
    check "MemoryDenyWriteExecute=yes only while focusd links no run-time code generator" \
        "focusd links oneDNN: set MemoryDenyWriteExecute=no in focusd.service" \
        sh -c "! ldd '$FOCUSD' | grep -q libdnnl ||
               ! grep -qx 'MemoryDenyWriteExecute=yes' '$root/units/focusd.service'"
    check "focusd.service exposure ${exposure:-unknown} <= $MAX_EXPOSURE" "over the limit" \
        awk -v e="${exposure:-99}" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }'
}

test_sysusers_tmpfiles() {
    local sysroot uid tmpfiles_ok d

    # sysusers.d and tmpfiles.d applied to an empty root: the user, the groups, the directories.
    sysroot=$T/sysroot
    mkdir -p "$sysroot/etc"
    touch "$sysroot/etc/passwd" "$sysroot/etc/group" "$sysroot/etc/shadow" "$sysroot/etc/gshadow"
    systemd-sysusers --root="$sysroot" "$PWD/systemd/focusd.sysusers" > /dev/null 2>&1
    check "sysusers.d: user focusd, its home /var/lib/focusd" "$(cat "$sysroot/etc/passwd")" \
        grep -q '^focusd:x:[0-9]*:[0-9]*:[^:]*:/var/lib/focusd:' "$sysroot/etc/passwd"
    check "sysusers.d: group focus with focusd in it; focusd in video" \
        "$(cat "$sysroot/etc/group")" \
        sh -c "grep -q '^focus:x:[0-9]*:focusd\$' '$sysroot/etc/group' &&
               grep -q '^video:x:[0-9]*:focusd\$' '$sysroot/etc/group'"
    systemd-tmpfiles --root="$sysroot" --create "$PWD/systemd/focusd.tmpfiles" > /dev/null 2>&1
    uid=$(awk -F: '$1 == "focusd" { print $3 }' "$sysroot/etc/passwd")
    tmpfiles_ok=yes
    for d in run/focusd:755 var/lib/focusd:750 var/cache/focusd:750 var/cache/focusd/cuda:750; do
        [ "$(stat -c '%u %a' "$sysroot/${d%:*}" 2>/dev/null)" = "$uid ${d#*:}" ] || tmpfiles_ok=$d
    done
    check "tmpfiles.d: /run/focusd, /var/lib/focusd, /var/cache/focusd/cuda owned by focusd" \
        "wrong owner or mode: $tmpfiles_ok" test "$tmpfiles_ok" = yes
}

# ---- bash completion against --help ----

complete_words() {
    bash -c 'source client/bash-completion/focus
             COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _focus
             printf "%s\n" "${COMPREPLY[@]}"' _ "$@" | sort -u
}
test_completion() {
    local help_cmds c
    help_cmds=$(focus_cmds)
    same "completion: focus <Tab> = the commands" "$help_cmds" "$(complete_words focus '')"
    same "completion: focus -<Tab> = the global options" \
        "$("$FOCUS" --help | help_section 'global options' | help_opts)" \
        "$(complete_words focus -)"
    for c in $help_cmds; do
        same "completion: focus $c -<Tab> = focus $c --help" \
            "$("$FOCUS" "$c" --help | help_opts)" "$(complete_words focus "$c" -)" \
            --help "the completion"
    done
}

# ---- socket activation and a client round trip ----

# systemd-socket-activate binds the socket, waits for the first connection and then starts
# focusd with LISTEN_FDS=1, as focusd.socket does; a notification socket stands in for
# systemd's. focusd must adopt the descriptor: binding the path itself would replace the
# socket file, which the inode check catches.
test_activation() {
    local sock daemon inode py pyrc pyout rc
    sock=$T/run/focusd.sock
    mkdir -p "$T/run" "$T/state"
    python3 tests/ops/notify_sink.py "$T/notify" "$T/notify.log" 120 &
    pids+=($!)
    for _ in $(seq 50); do [ -S "$T/notify" ] && break; sleep 0.1; done
    systemd-socket-activate -l "$sock" -E NOTIFY_SOCKET="$T/notify" -E WATCHDOG_USEC=1000000 \
        "$FOCUSD" --listen "ipc://$sock" --model "tiny=$MODEL" --device cpu \
        --state-dir "$T/state" > "$T/focusd.log" 2>&1 &
    daemon=$!
    pids+=($daemon)
    for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
    inode=$(stat -c %i "$sock" 2>/dev/null)
    if "$FOCUS" --timeout 60 -s "ipc://$sock" ping > "$T/ping.out" 2>&1; then
        ok "socket activation: focus ping through the activated socket"
    else
        fail "socket activation: focus ping through the activated socket" \
            "$(cat "$T/ping.out") / $(tail -n 5 "$T/focusd.log")"
    fi
    check "socket activation: focusd adopted the socket (same inode)" \
        "inode $inode became $(stat -c %i "$sock" 2>/dev/null)" \
        test "$inode" = "$(stat -c %i "$sock" 2>/dev/null)"
    # The ping is answered while the model loads; READY=1 follows once it is resident.
    for _ in $(seq 600); do grep -qx 'READY=1' "$T/notify.log" && break; sleep 0.1; done
    check "sd_notify: READY=1 once the model is loaded" "$(sort -u "$T/notify.log")" \
        grep -qx 'READY=1' "$T/notify.log"
    sleep 2.5
    check "sd_notify: WATCHDOG=1 pings at WATCHDOG_USEC/2" "$(sort -u "$T/notify.log")" \
        test "$(grep -cx 'WATCHDOG=1' "$T/notify.log")" -ge 2
    # The Python client, from the environment that `make deps` sets up.
    py=build/pyenv/bin/python
    [ -x "$py" ] || py=python3
    pyrc=0
    pyout=$(PYTHONPATH=client/python "$py" -c 'import sys; from focusd_client import Client
with Client(sys.argv[1]) as c: print(c.models())' "ipc://$sock" 2>&1) || pyrc=$?
    check "Python client: models through the activated socket" "$pyout" test "$pyrc" -eq 0
    kill -TERM "$daemon" 2>/dev/null
    rc=0
    wait "$daemon" || rc=$?
    check "SIGTERM: focusd exits 0" "exit status $rc; $(tail -n 3 "$T/focusd.log")" test "$rc" -eq 0
    check "sd_notify: STOPPING=1 on SIGTERM" "$(sort -u "$T/notify.log")" \
        grep -qx 'STOPPING=1' "$T/notify.log"
}

run_section test_man_help "$FOCUSD" "$FOCUS" man/focusd.8 man/focus.1
run_section test_conf_keys "$FOCUSD" man/focusd.conf.5 etc/focusd.conf
run_section test_mandoc man/focus.1 man/focus-run.1 man/focusd.8 man/focusd.conf.5
run_section test_install "$FOCUSD" "$FOCUS" "$BUILD/focus-run" etc/focusd.conf \
    man/focus.1 man/focusd.8 man/focusd.conf.5
run_section test_units "$FOCUSD" "$FOCUS" "$BUILD/focus-run" etc/focusd.conf \
    man/focus.1 man/focusd.8 man/focusd.conf.5
run_section test_sysusers_tmpfiles systemd/focusd.sysusers
run_section test_completion "$FOCUS"
run_section test_activation "$FOCUSD" "$FOCUS" "$MODEL/model_index.json"

finish
