"""Every request gets exactly one reply: a client that pipelines far more than its buffer
without reading gets a busy answer for each request it sent past it, an over-size frame is
answered bad_message and the session goes on, and events carry a per-session sequence number
that shows a client what it missed."""

import hashlib
import time

import msgpack
import pytest
import zmq

from conftest import TINY, focusd_client, wait_state


def dealer(endpoint, **opts):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    for k, v in opts.items():
        s.setsockopt(getattr(zmq, k), v)
    s.connect(endpoint)
    return s


def recv_all(sock, n, timeout=30.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        if sock.poll(200):
            got.append(msgpack.unpackb(sock.recv(), raw=False))
    return got


def test_pipelined_requests_all_answered(make_daemon):
    d = make_daemon(args=["--set", "client_buffer=64K"])
    s = dealer(d.endpoint, SNDHWM=0, RCVHWM=10)
    n = 20000
    for i in range(n):
        s.send(msgpack.packb({"v": 1, "id": i, "op": "ping"}))
    # Not read until everything is sent: the daemon's queue for this peer fills past 64K.
    time.sleep(1.0)
    replies = recv_all(s, n)
    ids = [r["id"] for r in replies]
    assert len(ids) == n and sorted(ids) == list(range(n)), (len(ids), len(set(ids)))
    busy = [r for r in replies if not r["ok"]]
    assert busy, "the peer's queue never went over client_buffer"
    for r in busy:
        assert r["error"]["code"] == "busy" and r["error"]["limit"] == "client_buffer", r
    assert sum(r["ok"] for r in replies) + len(busy) == n
    # Once it has read, the session is served again.
    s.send(msgpack.packb({"v": 1, "id": "after", "op": "ping"}))
    (r,) = recv_all(s, 1)
    assert r == {"v": 1, "id": "after", "ok": True}
    s.close()
    assert "request dropped" not in d.read_log()


def test_backlog_limit_discards_and_logs(make_daemon):
    d = make_daemon(args=["--set", "client_buffer=4K", "--set", "client_backlog=100"])
    s = dealer(d.endpoint, SNDHWM=0, RCVHWM=1)
    for i in range(20000):
        s.send(msgpack.packb({"v": 1, "id": i, "op": "ping"}))
    deadline = time.monotonic() + 20
    while "sent without reading any reply" not in d.read_log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "sent without reading any reply" in d.read_log()
    s.close()
    d.client(timeout=5).ping()


def test_oversize_frame_answered_session_kept(daemon):
    c = daemon.client()
    before = c.hello()["session"]
    job = c.submit("watched across a bad frame", steps=20, width=64, height=64, watch=True)
    # A 4 MiB frame: past the request limit, within what the socket reads.
    c._sock.send(msgpack.packb({"v": 1, "id": 77, "op": "ping", "pad": b"\0" * (4 << 20)}))
    deadline = time.monotonic() + 10
    reply = None
    while reply is None and time.monotonic() < deadline:
        m = c._recv(deadline)
        if "event" in m:
            c._events.append(m)
        else:
            reply = m
    assert reply["ok"] is False and reply["error"]["code"] == "bad_message", reply
    assert "exceeds the limit of 65536" in reply["error"]["message"]
    assert c.hello()["session"] == before
    kinds = [e["event"] for e in c.events(job, timeout=30)]
    assert kinds[-1] == "done" and "queued" in kinds


def test_event_sequence_numbers(daemon):
    a = daemon.client()
    b = daemon.client()
    j1 = a.submit("first", seed=1, watch=True, **TINY)
    ev1 = list(a.events(j1, timeout=30))
    j2 = a.submit("second", seed=2, steps=3, width=64, height=64, watch=True)
    b.watch(j2)
    ev2 = list(a.events(j2, timeout=30))
    seqs = [e["seq"] for e in ev1 + ev2]
    # Every event meant for the session arrived: 1, 2, 3, ... without a gap.
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    # Another session numbers its own events from 1.
    evb = list(b.events(j2, timeout=30))
    assert evb and evb[0]["seq"] == 1
    assert [e["seq"] for e in evb] == list(range(1, len(evb) + 1))
    assert wait_state(a, j2)["state"] == "done"


def test_wait_answers_at_the_end_or_the_timeout(make_daemon):
    d = make_daemon(args=["--set", "batch_max=1"])
    c = d.client()
    quick = c.submit("quick", **TINY)
    st = c.wait(quick, timeout=60)
    assert st["state"] == "done" and st["images"] == 1
    # Ended already: at once.
    t = time.monotonic()
    assert c.wait(quick, timeout=30)["state"] == "done"
    assert time.monotonic() - t < 1.0
    slow = c.submit("slow", steps=200, width=64, height=64)
    t = time.monotonic()
    st = c.wait(slow, timeout=0.5)
    assert 0.4 < time.monotonic() - t < 3.0 and st["state"] in ("queued", "running")
    # Another client's cancel ends the wait of the first with the final status.
    other = d.client()
    c._sock.send(msgpack.packb({"v": 1, "id": "w", "op": "wait", "job": slow, "timeout": 60.0}))
    time.sleep(0.3)
    other.cancel(slow)
    assert c._sock.poll(10000)
    r = msgpack.unpackb(c._sock.recv(), raw=False)
    assert r["id"] == "w" and r["state"] == "canceled"
    with pytest.raises(focusd_client.FocusdError) as e:
        c.wait("jnosuchjob", timeout=1)
    assert e.value.code == "not_found"
    with pytest.raises(focusd_client.FocusdError) as e:
        c.request("wait", job=quick, timeout=4000.0)
    assert (e.value.code, e.value.field) == ("bad_field", "timeout")


def test_done_event_carries_the_png_when_asked(daemon):
    c = daemon.client()
    job = c.submit("delivered with its event", seed=5, count=2, watch=True, png=True, **TINY)
    plain = daemon.client()
    plain.watch(job)
    done = list(c.events(job, timeout=30))[-1]
    assert done["event"] == "done" and len(done["png"]) == 2 and len(done["sha256"]) == 2
    for i in range(2):
        img = c.fetch(job, i)
        assert done["png"][i] == img["png"]
        assert done["sha256"][i] == hashlib.sha256(img["png"]).digest()
    # A watcher that did not ask gets the plain event.
    assert "png" not in list(plain.events(job, timeout=30))[-1]


def test_jobs_lists_own_jobs_in_pages(daemon):
    c = daemon.client()
    mine = [c.submit(f"page {i}", seed=i, **TINY) for i in range(5)]
    seen, cursor, pages = [], None, 0
    while True:
        page, cursor = c.jobs_page(limit=2, cursor=cursor)
        seen += [j["job"] for j in page]
        pages += 1
        if cursor is None:
            break
    assert seen == mine[::-1] and pages == 3
    with pytest.raises(focusd_client.FocusdError) as e:
        c.jobs(cursor="bogus")
    assert (e.value.code, e.value.field) == ("bad_field", "cursor")
    for j in mine:
        wait_state(c, j)
