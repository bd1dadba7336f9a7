"""Many clients at once: nothing lost, one peer's jobs in order however many sockets it uses;
and a client that never reads its replies cannot stall the daemon or make it grow."""

import os
import threading
import time

import msgpack
import zmq

from conftest import TINY, focusd_client, wait_state

# FOCUSD_IT_JOBS scales the load down on a slow machine; the acceptance run uses 200.
CLIENTS, JOBS = 16, int(os.environ.get("FOCUSD_IT_JOBS", "200"))
STALL = 300  # seconds a client may go without a message from the daemon


def test_many_clients_none_lost_and_fair(make_daemon):
    d = make_daemon(args=["--set", "max_queue=4000", "--set", "max_jobs_per_peer=4000",
                          "--set", "batch_max=8"])
    submitted = [[] for _ in range(CLIENTS)]
    done = [set() for _ in range(CLIENTS)]
    errors = []
    # Client 0 queues all its jobs before the others start.
    first_batch = threading.Event()

    def run(i):
        try:
            c = focusd_client.Client(d.endpoint, timeout=60)
            if i:
                first_batch.wait(30)
            for k in range(JOBS):
                submitted[i].append(c.submit(f"client {i} job {k}", seed=k, watch=True, **TINY))
            if i == 0:
                first_batch.set()
            # A late client's first event waits for the jobs queued before its own: minutes
            # on a slow machine, so the silence allowed is generous; a lost event still fails.
            for ev in c.events(timeout=STALL):
                if ev["event"] == "done":
                    done[i].add(ev["job"])
                elif ev["event"] in ("failed", "canceled"):
                    errors.append(ev)
                if len(done[i]) == JOBS:
                    break
            c.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 3 * STALL
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "clients still waiting"
    elapsed = time.monotonic() - t0
    assert not errors, errors[:5]
    for i in range(CLIENTS):
        assert len(submitted[i]) == JOBS and done[i] == set(submitted[i]), f"client {i}"
    c = d.client()
    st = c.stats()
    assert st["done"] == CLIENTS * JOBS and st["queued"] == 0 and st["running"] == 0
    # All the clients are one peer (this uid): its jobs run by priority, then age, so the
    # first job submitted starts first and the last one last; fairness between peers is
    # tests/integration/test_peers.py's.
    status = {j: c.job(j) for i in range(CLIENTS) for j in submitted[i]}
    order = sorted(status, key=lambda j: status[j]["started"])
    first_sub = min(status, key=lambda j: status[j]["created"])
    last_sub = max(status, key=lambda j: status[j]["created"])
    assert order.index(first_sub) < 8 and order.index(last_sub) >= len(order) - 8
    print(f"\n{CLIENTS * JOBS} jobs from {CLIENTS} clients in {elapsed:.1f} s")


def test_client_that_never_reads(make_daemon):
    # A small quarantine keeps a sanitizer build's RSS meaningful; other builds ignore it.
    d = make_daemon(args=["--set", "client_buffer=1M"],
                    env={"ASAN_OPTIONS": "quarantine_size_mb=4:detect_leaks=1"})
    c = d.client(timeout=5)
    job = c.submit("an image to fetch again and again", **TINY)
    png = len(wait_state(c, job) and c.fetch(job)["png"])
    ctx = zmq.Context.instance()
    deaf = ctx.socket(zmq.DEALER)
    deaf.setsockopt(zmq.RCVHWM, 10)
    deaf.setsockopt(zmq.SNDHWM, 100000)
    deaf.setsockopt(zmq.LINGER, 0)
    deaf.connect(d.endpoint)
    # Each request asks for the image: unread replies would pile up at png bytes apiece.
    payload = msgpack.packb({"v": 1, "op": "fetch", "id": 1, "job": job})
    rss = []
    for rnd in range(5):
        for k in range(2000):
            deaf.send(payload, zmq.NOBLOCK)
        t = time.monotonic()
        c.ping()  # answered promptly although the deaf peer's replies pile up
        assert time.monotonic() - t < 1.0
        time.sleep(0.3)
        rss.append(d.rss_kib())
    # 10000 unread replies would be 10000 * png bytes; the backlog is bounded by
    # client_buffer, so memory stays flat after the first round.
    assert 10000 * png > 64 << 20
    assert rss[-1] - rss[0] < 16 * 1024, rss
    later = c.submit("still working", **TINY)
    deaf.close()
    assert wait_state(c, later)["images"] == 1
