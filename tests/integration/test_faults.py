"""No fault costs a job or the daemon: a failing commit during retention deletes no file, a
failing recovery at start changes nothing, a reload that cannot apply keeps the running
configuration, a slow image read holds up no one else, and a job that cannot get its memory
ends out_of_memory while the daemon serves on. Faults the machine cannot make on demand are
injected by tests/integration/fault_inject.c, preloaded into focusd."""

import os
import shutil
import signal
import sqlite3
import time

import msgpack
import pytest
import zmq

from conftest import MODEL, TINY, fault_env, focusd_client, wait_expired, wait_for, wait_state


@pytest.fixture
def faults(workdir, fault_lib):
    control = os.path.join(workdir, "faults")

    def arm(*lines):
        with open(control + ".new", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(control + ".new", control)

    def disarm():
        if os.path.exists(control):
            os.unlink(control)

    arm.disarm = disarm
    arm.env = fault_env(fault_lib, control)
    yield arm
    disarm()


def test_retention_deletes_files_only_after_commit(make_daemon, faults):
    d = make_daemon(args=["--set", "retention_age=1s", "--set", "retention_interval=1s"],
                    env=faults.env)
    c = d.client()
    j = c.submit("kept while the store cannot commit", **TINY)
    wait_state(c, j)
    faults("sql COMMIT")  # a full disk: every commit fails from now on, retention's too
    wait_for(lambda: "retention: job store" in d.read_log(), what="a failed retention pass")
    path = os.path.join(d.state, "images", f"{j}-0.png")
    faults.disarm()
    # The job's deletion was rolled back: its rows and its file are both still there.
    st = c.job(j)
    assert os.path.exists(path) and st["images"] == 1
    assert c.fetch(j)["png"]
    wait_expired(c, j)  # once the disk has come back
    assert not os.path.exists(path)


def test_retention_removes_a_backlog_in_bounded_batches(make_daemon):
    d = make_daemon()
    c = d.client()
    first = c.submit("old 0", **TINY)
    wait_state(c, first)
    assert d.stop() == 0
    d.close_clients()
    # A long history: 1099 more finished jobs like the first, rows and files, as a daemon
    # that ran for weeks leaves them.
    db = sqlite3.connect(os.path.join(d.state, "jobs.db"))
    cols = [r[1] for r in db.execute("PRAGMA table_info(jobs)") if r[1] != "seq"]
    row = dict(zip(cols, db.execute(f"SELECT {','.join(cols)} FROM jobs").fetchone()))
    img = db.execute("SELECT file, sha256, bytes FROM images").fetchone()
    src = os.path.join(d.state, "images", img[0])
    jobs = [first]
    for i in range(1, 1100):
        jid = f"jold{i:012d}"
        jobs.append(jid)
        row.update(id=jid, finished=row["finished"] - i)
        db.execute(f"INSERT INTO jobs ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                   [row[k] for k in cols])
        db.execute("INSERT INTO images VALUES (?, 0, ?, ?, ?)", (jid, f"{jid}-0.png", img[1],
                                                                 img[2]))
        shutil.copyfile(src, os.path.join(d.state, "images", f"{jid}-0.png"))
    db.commit()
    db.close()
    # Restarted with a retention age they all exceed: the start's pass removes at most
    # 4 batches of 64, and the loop goes on with the rest turn by turn, serving meanwhile.
    time.sleep(1.1)
    d.args += ["--set", "retention_age=1s", "--set", "retention_interval=1h"]
    d.start()
    c = d.client()
    t = time.monotonic()
    c.ping()
    assert time.monotonic() - t < 3.0  # a few batches' commits at most, on a loaded disk
    wait_for(lambda: c.stats()["done"] == 0, timeout=30, what="the backlog removed")
    assert "256 finished job(s) removed; more next turn" in d.read_log()
    assert not os.listdir(os.path.join(d.state, "images"))
    with pytest.raises(focusd_client.FocusdError) as e:
        c.fetch(jobs[0])
    assert e.value.code == "expired"


def test_failed_recovery_changes_nothing(make_daemon, faults):
    d = make_daemon(args=["--set", "batch_max=1"], env=faults.env)
    c = d.client()
    j = c.submit("interrupted", steps=200, width=64, height=64)
    wait_state(c, j, ("running",))
    d.kill9()
    d.close_clients()
    faults("sql UPDATE jobs SET state='queued'")
    d.start(wait=False)
    assert d.proc.wait(20) == 1
    assert "requeue" in d.read_log()
    faults.disarm()
    d.start()
    c = d.client()
    assert c.job(j)["state"] in ("queued", "running")
    c.cancel(j)
    assert wait_state(c, j, ("canceled",))["state"] == "canceled"


def test_reload_that_cannot_apply_keeps_running_config(make_daemon):
    conf = f"max_queue = 7\n[model tiny]\npath = {MODEL}\n"
    d = make_daemon(conf=conf)
    with open(d.conf, "w") as f:
        f.write(f"max_queue = 9\nallow_users = no-such-user-anywhere\n[model tiny]\npath = {MODEL}\n")
    for i in range(20):
        d.signal(signal.SIGHUP)
        wait_for(lambda: d.read_log().count("the running configuration stays") > i,
                 what="the refusal")
    c = d.client()
    assert c.hello()["max_queue"] == 7
    # A sanitizer build's leak check at this stop sees every refused configuration freed.
    assert d.stop() == 0


def test_slow_image_read_blocks_no_one(make_daemon, faults):
    d = make_daemon(env=faults.env)
    c = d.client()
    j = c.submit("an image on a slow disk", **TINY)
    wait_state(c, j)
    expect = c.fetch(j)["sha256"]
    faults("slow_png 2")
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(d.endpoint)
    s.send(msgpack.packb({"v": 1, "id": 1, "op": "fetch", "job": j}))
    time.sleep(0.2)
    t = time.monotonic()
    c.ping()
    c.stats()
    assert time.monotonic() - t < 0.5, "a ping waited for the image read"
    assert s.poll(10000)
    r = msgpack.unpackb(s.recv(), raw=False)
    faults.disarm()
    assert r["ok"] and r["sha256"] == expect
    s.close()


def test_job_without_memory_ends_out_of_memory(make_daemon, faults):
    d = make_daemon(env=faults.env)
    c = d.client()
    small = c.submit("fits", **TINY)
    wait_state(c, small)
    # 32 MiB: more than any tensor of a 64x64 job, less than the VAE's at 512x512.
    faults(f"alloc_over {32 << 20}")
    big = c.submit("too big for what is left", steps=1, width=512, height=512, guidance=0.0,
                   watch=True)
    evs = list(c.events(big, timeout=60))
    faults.disarm()
    assert evs[-1]["event"] == "failed" and evs[-1]["error"]["code"] == "out_of_memory", evs[-1]
    st = c.job(big)
    assert st["state"] == "failed" and st["error"]["code"] == "out_of_memory"
    assert d.proc.poll() is None
    assert wait_state(c, c.submit("after it", **TINY))["images"] == 1
