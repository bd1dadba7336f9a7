#!/bin/sh
# make demo: starts focusd on a temporary socket with the bundled fixture model, generates an
# image with `focus generate`, and stops the daemon. The fixture is a tiny random model, so the
# picture is noise-like: the demo shows the whole path (daemon, protocol, client, PNG), not art.
set -eu
BUILD=${BUILD:-build}
OUT=${DEMO_OUT:-demo.png}
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
"$BUILD/focusd" --model tiny=tests/fixtures/tiny-sd35 --device cpu \
    --listen "ipc://$dir/focusd.sock" --state-dir "$dir/state" 2>"$dir/focusd.log" &
pid=$!
export FOCUS_SOCKET="ipc://$dir/focusd.sock"
i=0
# The socket answers at once; jobs are taken once the model is resident.
until "$BUILD/focus" models --json 2>/dev/null | grep -q '"loaded":true'; do
    i=$((i + 1))
    if [ "$i" -ge 100 ] || ! kill -0 "$pid" 2>/dev/null; then
        echo "demo: focusd did not start:" >&2
        cat "$dir/focusd.log" >&2
        exit 1
    fi
    sleep 0.1
done
"$BUILD/focus" ping
"$BUILD/focus" generate "a red fox in the snow, watercolor" --size 256x256 --steps 8 \
    --seed 42 -o "$OUT"
echo "demo: wrote $OUT"
