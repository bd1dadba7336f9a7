"""Jobs per second and submit latency of daemons sharing one PostgreSQL queue, against one
daemon on SQLite, on the fixture model; and the time from a kill -9 of a daemon to the takeover
of its running job. A benchmark, not a test: it prints figures.

    build/pyenv/bin/python tests/bench/bench_shared.py [--jobs 200] [--clients 8]
        [--daemons 1,2,4] [--lease 2]

Each run starts its daemons (and, for PostgreSQL, a server of its own, as the integration
tests do), submits --jobs one-step 64x64 jobs from --clients clients spread over the daemons,
and waits until all are done. Lines "BENCH store daemons jobs_per_s submit_p99_ms" are for
scripts."""

import argparse
import os
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from conftest import TINY, Daemon, Postgres  # noqa: E402


def start_daemons(workdir, n, store, lease):
    daemons = []
    for i in range(n):
        d = os.path.join(workdir, f"d{i}")
        os.makedirs(d)
        args = ["--state-dir", os.path.join(workdir, "shared"), "--set", "batch_max=4",
                "--set", "max_jobs_per_peer=100000", "--set", "max_queue=100000"]
        if store != "sqlite":
            args += ["--store", store, "--set", f"lease_time={lease}s"]
        daemons.append(Daemon(d, args).start())
    return daemons


def run(daemons, n_jobs, n_clients):
    clients = [daemons[i % len(daemons)].client(timeout=120) for i in range(n_clients)]
    latencies, jobs = [], [[] for _ in clients]

    def submit(k):
        for i in range(k, n_jobs, n_clients):
            t = time.monotonic()
            jobs[k].append(clients[k].submit(f"bench {i}", seed=i, **TINY))
            latencies.append(time.monotonic() - t)

    t0 = time.monotonic()
    threads = [threading.Thread(target=submit, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c, js in zip(clients, jobs):
        for j in js:
            st = c.wait(j, timeout=600)
            assert st["state"] == "done", st
    elapsed = time.monotonic() - t0
    for c in clients:
        c.close()
    latencies.sort()
    return n_jobs / elapsed, latencies[int(len(latencies) * 0.99) - 1] * 1000


def takeover(pg, workdir, lease):
    store = pg.database()
    a, b = start_daemons(workdir, 2, store, lease)
    c = a.client()
    job = c.submit("victim", steps=200, width=64, height=64)
    while pg.sql(store, f"SELECT state FROM jobs WHERE id = '{job}'") != "running":
        time.sleep(0.01)
    a.kill9()
    t = time.monotonic()
    owner = a.dir
    while True:
        holder = pg.sql(store, f"SELECT lease_owner FROM jobs WHERE id = '{job}'")
        if holder and owner not in holder:
            break
        time.sleep(0.01)
    took = time.monotonic() - t
    c.close()
    b.stop()
    return took


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--daemons", default="1,2,4")
    ap.add_argument("--lease", type=int, default=2)
    o = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="focusd-bench-") as base:
        os.chmod(base, 0o755)
        w = os.path.join(base, "sqlite")
        daemons = start_daemons(w, 1, "sqlite", o.lease)
        try:
            results.append(("sqlite", 1, *run(daemons, o.jobs, o.clients)))
        finally:
            for d in daemons:
                d.stop()
        pgdir = os.path.join(base, "pg")
        os.makedirs(pgdir)
        os.chmod(pgdir, 0o755)
        pg = Postgres(pgdir, fsync=True)  # as durable as SQLite's synchronous=FULL
        pg.start()
        try:
            for n in map(int, o.daemons.split(",")):
                w = os.path.join(base, f"pg{n}")
                daemons = start_daemons(w, n, pg.database(), o.lease)
                try:
                    results.append(("postgresql", n, *run(daemons, o.jobs, o.clients)))
                finally:
                    for d in daemons:
                        d.stop()
            took = takeover(pg, os.path.join(base, "takeover"), o.lease)
        finally:
            pg.stop()
    print(f"{'store':<12}{'daemons':>8}{'jobs/s':>10}{'submit p99 ms':>15}")
    for store, n, rate, p99 in results:
        print(f"{store:<12}{n:>8}{rate:>10.1f}{p99:>15.1f}")
        print(f"BENCH {store} {n} {rate:.2f} {p99:.2f}")
    print(f"kill -9 to takeover: {took:.2f} s (lease_time {o.lease} s)")
    print(f"BENCH takeover {took:.3f}")


if __name__ == "__main__":
    main()
