"""The daemon's life: crash and restart lose nothing, SIGTERM stops cleanly, SIGHUP reloads
without losing a job, retention removes old results, systemd hears READY, STATUS, WATCHDOG and
STOPPING on a real notify socket, and an inherited listening socket is adopted; each with the
SQLite store and with a PostgreSQL one."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import (FOCUSD, MODEL, TINY, focusd_client, notify_socket, store_args, store_param,
                      wait_expired, wait_for, wait_state)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request):
    """Every test here runs against both stores."""
    return store_param(request)


def test_kill9_mid_queue_then_restart(make_daemon):
    d = make_daemon(args=["--set", "batch_max=2"])
    c = d.client()
    jobs = [c.submit(f"job {i}", seed=i, steps=3, width=64, height=64) for i in range(30)]
    first = wait_state(c, jobs[0])
    d.kill9()
    d.close_clients()
    d.start()
    c = d.client()
    for j in jobs:
        st = wait_state(c, j, timeout=90)
        assert st["images"] == 1
        img = c.fetch(j)
        assert len(img["png"]) > 0
    # The job finished before the crash kept its image and its time.
    assert c.job(jobs[0])["finished"] == first["finished"]
    assert "interrupted job(s) queued again" in d.read_log() or \
        "queued job(s) resumed" in d.read_log()


def test_sigterm_finishes_step_and_persists(make_daemon):
    d = make_daemon(args=["--set", "batch_max=1"])
    c = d.client()
    running = c.submit("long", steps=200, width=64, height=64)
    waiting = c.submit("next", **TINY)
    wait_state(c, running, ("running",))
    t = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - t < 10
    log = d.read_log()
    assert "SIGTERM" in log and "<6>stopped" in log
    d.close_clients()
    d.start()
    c = d.client()
    assert c.job(running)["state"] in ("queued", "running")
    c.cancel(running)
    assert wait_state(c, waiting)["images"] == 1


def test_sighup_reload(make_daemon, workdir):
    conf = f"max_queue = 3\n[model tiny]\npath = {MODEL}\n"
    d = make_daemon(conf=conf, args=["--set", "batch_max=1"])
    c = d.client()
    long_job = c.submit("long", steps=60, width=64, height=64)
    wait_state(c, long_job, ("running",))
    for i in range(3):
        c.submit(f"q{i}", **TINY)
    with pytest.raises(focusd_client.FocusdError) as e:
        c.submit("q3", **TINY)
    assert e.value.code == "busy"
    with open(d.conf, "w") as f:
        f.write(f"max_queue = 100\n[model tiny]\npath = {MODEL}\n[model other]\npath = {MODEL}\n")
    d.signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in d.read_log(), what="reload")
    wait_for(lambda: any(m["name"] == "other" and m["loaded"] for m in c.models()),
             what="the new model loaded")
    j_other = c.submit("on the new model", model="other", **TINY)
    more = [c.submit(f"more {i}", **TINY) for i in range(5)]
    for j in [long_job, j_other] + more:
        assert wait_state(c, j, timeout=90)["images"] == 1
    # Removing a model unloads it once idle; its name is then unknown.
    with open(d.conf, "w") as f:
        f.write(f"[model tiny]\npath = {MODEL}\n")
    d.signal(signal.SIGHUP)
    wait_for(lambda: "model other: unloaded" in d.read_log(), what="unload")
    with pytest.raises(focusd_client.FocusdError) as e:
        c.submit("gone", model="other", **TINY)
    assert e.value.code == "not_found"
    # A broken file keeps the running configuration.
    with open(d.conf, "w") as f:
        f.write("max_queue = lots\n")
    d.signal(signal.SIGHUP)
    wait_for(lambda: "the running configuration stays" in d.read_log(), what="refusal")
    assert "focusd.conf:1: key \"max_queue\"" in d.read_log()
    c.ping()


def test_retention_by_age(make_daemon):
    d = make_daemon(args=["--set", "retention_age=1s", "--set", "retention_interval=1s"])
    c = d.client()
    j = c.submit("ephemeral", **TINY)
    wait_state(c, j)
    path = os.path.join(d.state, "images", f"{j}-0.png")
    assert os.path.exists(path)
    wait_expired(c, j)
    assert not os.path.exists(path)
    # Its own code, not that of an id that never was.
    with pytest.raises(focusd_client.FocusdError) as e:
        c.fetch(j)
    assert (e.value.code, e.value.field) == ("expired", "job")
    with pytest.raises(focusd_client.FocusdError) as e:
        c.job("jneverexisted")
    assert e.value.code == "not_found"


def test_retention_by_size(make_daemon):
    d = make_daemon(args=["--set", "retention_bytes=1", "--set", "retention_interval=1s"])
    c = d.client()
    a = c.submit("first", **TINY)
    wait_state(c, a)
    b = c.submit("second", **TINY)
    wait_state(c, b)
    wait_expired(c, a)


def test_sd_notify(make_daemon, workdir):
    path = os.path.join(workdir, "notify")
    ns = notify_socket(path)
    d = make_daemon(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}, start=False)
    d.env.pop("WATCHDOG_PID", None)
    got = []
    reading = threading.Event()

    def drain():
        # Read as systemd does, all along: a notify socket nobody reads fills after ten
        # datagrams and sd_notify then waits (a slow sanitizer build's load sends more).
        while not reading.is_set():
            try:
                got.append(ns.recv(4096).decode())
            except socket.timeout:
                pass
    reader = threading.Thread(target=drain)
    reader.start()
    try:
        d.start()
        c = d.client()
        c.submit("status", **TINY)
        time.sleep(1.5)
        assert d.stop() == 0
        time.sleep(0.3)
    finally:
        reading.set()
        reader.join()
    ns.close()
    text = "\n".join(got)
    assert "EXTEND_TIMEOUT_USEC=" in got[0]
    ready = next(i for i, m in enumerate(got) if "READY=1" in m)
    assert any("STATUS=" in m and "queued" in m for m in got[ready:]), got
    assert text.count("WATCHDOG=1") >= 3, got
    assert "STOPPING=1" in text and got.index(next(m for m in got if "STOPPING=1" in m)) > ready


def test_socket_activation(workdir, store):
    path = os.path.join(workdir, "act.sock")
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    ls.listen(16)
    fd = ls.fileno()
    log = open(os.path.join(workdir, "act.log"), "w")
    env = dict(os.environ, LISTEN_FDS="1")
    # LISTEN_PID must be focusd's own pid: a small wrapper moves the socket to fd 3
    # (SD_LISTEN_FDS_START), sets LISTEN_PID to its pid and execs into focusd.
    wrapper = ("import os, sys; os.dup2(int(sys.argv[1]), 3); "
               "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[2], sys.argv[2:])")
    cmd = [sys.executable, "-c", wrapper, str(fd), FOCUSD, "--model", "tiny=" + MODEL,
           "--listen", "ipc://" + os.path.join(workdir, "unused.sock"),
           "--state-dir", os.path.join(workdir, "state"), "--device", "cpu", *store_args(store)]
    p = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, pass_fds=(fd,))
    try:
        def ready():
            with open(os.path.join(workdir, "act.log")) as f:
                return "<6>ready" in f.read()
        wait_for(ready, what="ready")
        c = focusd_client.Client("ipc://" + path, timeout=20)
        j = c.submit("activated", **TINY)
        assert wait_state(c, j)["images"] == 1
        c.close()
        assert not os.path.exists(os.path.join(workdir, "unused.sock"))
        with open(os.path.join(workdir, "act.log")) as f:
            assert "socket activation" in f.read()
    finally:
        p.send_signal(signal.SIGTERM)
        rc = p.wait(20)
        ls.close()
        with open(os.path.join(workdir, "act.log")) as f:
            assert rc == 0, f.read()
