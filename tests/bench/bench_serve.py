"""Serving benchmark for `make bench-serve`: starts build/focusd (or $FOCUSD) with the fixture
model on a temporary ipc socket and reports ping latency (p50/p99), small requests per second,
the reply latency (p50/p99) with 64 clients each pipelining 1,000 requests, jobs per second with
1 and 8 clients, and the daemon's RSS idle, with 1000 jobs queued, and with 10,000 jobs queued
and 1,000 sessions open. Loopback only, bounded loops, about a minute. Needs pyzmq and msgpack.
Figures depend on the machine: quote them with its description."""

import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "client", "python"))

import msgpack  # noqa: E402
import zmq  # noqa: E402
from focusd_client import Client  # noqa: E402

FOCUSD = os.environ.get("FOCUSD", os.path.join(ROOT, os.environ.get("BUILD", "build"), "focusd"))
MODEL = os.path.join(ROOT, "tests", "fixtures", "tiny-sd35")
TINY = dict(steps=1, width=64, height=64, guidance=0.0)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def start(tmp, *extra):
    endpoint = "ipc://" + os.path.join(tmp, "focusd.sock")
    log = open(os.path.join(tmp, "focusd.log"), "w")
    p = subprocess.Popen([FOCUSD, "--model", "tiny=" + MODEL, "--listen", endpoint, "--state-dir",
                          os.path.join(tmp, "state"), "--device", "cpu", *extra],
                         stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(os.path.join(tmp, "focusd.log")) as f:
            if "<6>ready" in f.read():
                return p, endpoint
        time.sleep(0.05)
    raise SystemExit("focusd did not become ready")


def ping_latency(endpoint, n=5000):
    c = Client(endpoint)
    for _ in range(200):
        c.ping()
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        c.ping()
        lat.append(time.perf_counter() - t)
    c.close()
    lat.sort()
    return lat[n // 2] * 1e6, lat[int(n * 0.99)] * 1e6


def requests_per_s(endpoint, seconds=2.0, window=256):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    frame = msgpack.packb({"v": 1, "id": 1, "op": "ping"})
    sent = got = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        while sent - got < window:
            s.send(frame)
            sent += 1
        s.recv()
        got += 1
    while got < sent:
        s.recv()
        got += 1
    dt = time.perf_counter() - t0
    s.close()
    return got / dt


def pipelined_latency(endpoint, clients=64, each=1000):
    """64 sockets each send 1,000 pings at once; each reply's latency runs from its own send
    to its receipt. One thread drives all sockets, so the figures are the daemon's queueing,
    not the client's scheduling."""
    ctx = zmq.Context()
    socks = []
    for _ in range(clients):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.connect(endpoint)
        socks.append(s)
    for s in socks:  # connected and known to the daemon before the clock starts
        s.send(msgpack.packb({"v": 1, "id": "warm", "op": "ping"}))
        s.recv()
    sent = {}
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    lat, busy = [], 0

    def drain(wait_ms):
        nonlocal busy
        for s, _ in poller.poll(wait_ms):
            while True:
                try:
                    m = msgpack.unpackb(s.recv(zmq.NOBLOCK), raw=False)
                except zmq.Again:
                    break
                lat.append(time.perf_counter() - sent[m["id"]])
                busy += not m["ok"]
    # Rounds of one request per socket, replies read between them: 64,000 requests in
    # flight at most, each client's 1,000 pipelined without waiting for its replies.
    for k in range(each):
        for i, s in enumerate(socks):
            rid = i * each + k
            sent[rid] = time.perf_counter()
            s.send(msgpack.packb({"v": 1, "id": rid, "op": "ping"}))
        drain(0)
    deadline = time.monotonic() + 60
    while len(lat) < clients * each and time.monotonic() < deadline:
        drain(1000)
    for s in socks:
        s.close()
    ctx.term()
    lat.sort()
    n = len(lat)
    return n, busy, lat[n // 2] * 1e6, lat[int(n * 0.99)] * 1e6


def queued_and_sessions_rss(pid, endpoint, jobs=10000, sessions=1000):
    """RSS with jobs queued behind a long job and sessions open (each has said hello)."""
    ctx = zmq.Context()
    ctx.setsockopt(zmq.MAX_SOCKETS, sessions + 16)
    c = Client(endpoint, timeout=120, context=ctx)
    first = c.submit("hold the worker", steps=200, width=64, height=64)
    s = c._sock
    for k in range(jobs):
        s.send(msgpack.packb({"v": 1, "id": 10 + k, "op": "submit", "prompt": f"queued {k}",
                              "seed": k, "priority": -1, "steps": 1, "width": 64,
                              "height": 64, "guidance": 0.0}))
    ok = 0
    for _ in range(jobs):
        ok += msgpack.unpackb(s.recv(), raw=False)["ok"]
    open_socks = []
    for _ in range(sessions):
        z = ctx.socket(zmq.DEALER)
        z.setsockopt(zmq.LINGER, 0)
        z.connect(endpoint)
        z.send(msgpack.packb({"v": 1, "id": 1, "op": "hello"}))
        open_socks.append(z)
    for z in open_socks:
        z.recv()
    rss = rss_kib(pid)
    c.cancel(first)
    for z in open_socks:
        z.close()
    c.close()
    ctx.term()
    return ok, rss


def jobs_per_s(endpoint, clients, jobs_each):
    def run(i):
        c = Client(endpoint, timeout=120)
        js = {c.submit(f"bench {i} {k}", seed=k, watch=True, **TINY) for k in range(jobs_each)}
        done = 0
        for ev in c.events(timeout=120):
            if ev["event"] in ("done", "failed", "canceled") and ev["job"] in js:
                done += 1
                if done == len(js):
                    break
        c.close()
    t0 = time.perf_counter()
    ts = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return clients * jobs_each / (time.perf_counter() - t0)


def main():
    # 1,000 sessions are 1,000 connections: file descriptors on both ends.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    with tempfile.TemporaryDirectory(prefix="focusd-bench-") as tmp:
        p, ep = start(tmp, "--set", "max_queue=20000", "--set", "max_jobs_per_peer=20000",
                      "--set", "batch_max=8")
        try:
            p50, p99 = ping_latency(ep)
            print(f"ping latency over ipc: p50 {p50:.0f} us, p99 {p99:.0f} us")
            print(f"small requests (ping, 256 in flight): {requests_per_s(ep):.0f} /s")
            n, busy, p50, p99 = pipelined_latency(ep)
            print(f"reply latency, 64 clients each pipelining 1000 pings: p50 {p50 / 1000:.1f} ms, "
                  f"p99 {p99 / 1000:.1f} ms ({n} replies, {busy} busy)")
            print(f"jobs/s, 64x64, 1 step, 1 client: {jobs_per_s(ep, 1, 40):.1f}")
            print(f"jobs/s, 64x64, 1 step, 8 clients: {jobs_per_s(ep, 8, 20):.1f}")
            time.sleep(0.5)
            idle = rss_kib(p.pid)
            c = Client(ep)
            first = c.submit("hold the worker", steps=200, width=64, height=64)
            for k in range(1000):
                c.submit(f"queued {k}", seed=k, priority=-1, **TINY)
            queued = rss_kib(p.pid)
            print(f"daemon RSS: idle {idle / 1024:.1f} MiB, with 1000 jobs queued "
                  f"{queued / 1024:.1f} MiB (+{(queued - idle) / 1000:.1f} KiB per job)")
            c.cancel(first)
            c.close()
            ok, rss = queued_and_sessions_rss(p.pid, ep)
            print(f"daemon RSS with {ok} jobs queued and 1000 sessions: {rss / 1024:.1f} MiB")
        finally:
            p.terminate()
            p.wait(30)


if __name__ == "__main__":
    main()
