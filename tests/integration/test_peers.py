"""Sessions belong to who sent them: the authenticated peer (here two CURVE keys on the tcp
endpoint) owns its jobs across all its sockets; a routing id reused by another peer inherits
nothing; quotas, fairness and the cancel permission count peers, not sockets; sessions are
bounded in all and per peer, as hello reports."""

import os
import socket as pysocket
import time

import msgpack
import pytest
import zmq

from conftest import TINY, wait_for, wait_state


@pytest.fixture
def curve(make_daemon, workdir):
    server_pub, server_sec = zmq.curve_keypair()
    keys = [zmq.curve_keypair() for _ in range(2)]
    with open(os.path.join(workdir, "server.key"), "wb") as f:
        f.write(server_sec + b"\n")
    with open(os.path.join(workdir, "clients.keys"), "wb") as f:
        f.write(b"\n".join(pub for pub, _ in keys) + b"\n")
    with pysocket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def start(*args):
        return make_daemon(args=["--set", f"tcp=tcp://127.0.0.1:{port}",
                                 "--set", f"curve_secret_key_file={workdir}/server.key",
                                 "--set", f"curve_authorized_keys={workdir}/clients.keys",
                                 *args])

    socks = []

    def connect(peer, routing_id=None):
        z = zmq.Context.instance().socket(zmq.DEALER)
        z.setsockopt(zmq.LINGER, 0)
        if routing_id:
            z.setsockopt(zmq.ROUTING_ID, routing_id)
        z.curve_serverkey = server_pub
        z.curve_publickey, z.curve_secretkey = keys[peer]
        z.connect(f"tcp://127.0.0.1:{port}")
        socks.append(z)
        return z

    start.connect = connect
    yield start
    for z in socks:
        z.close()


ids = iter(range(1, 1 << 30))


def call(z, op, **fields):
    rid = next(ids)
    z.send(msgpack.packb(dict({"v": 1, "id": rid, "op": op}, **fields)))
    while True:
        assert z.poll(20000), f"no reply to {op}"
        m = msgpack.unpackb(z.recv(), raw=False)
        if m.get("id") == rid:
            return m


def test_routing_id_reused_by_another_peer_is_refused(curve):
    curve()
    a = curve.connect(0, routing_id=b"chosen-id")
    job = call(a, "submit", prompt="a's job", watch=True, **TINY)["job"]
    wait_for(lambda: call(a, "job", job=job)["state"] == "done", what="done")
    a.close()
    # libzmq refuses a connection whose identity an open one still has: b retries until the
    # daemon's socket has let go of a's.
    time.sleep(0.5)
    b = curve.connect(1, routing_id=b"chosen-id")
    for _ in range(20):
        b.send(msgpack.packb({"v": 1, "id": "b", "op": "ping"}))
        if b.poll(1000):
            break
    r = msgpack.unpackb(b.recv(), raw=False)
    assert r["ok"] is False and r["error"]["code"] == "forbidden", r
    # b got nothing of a's session (a's unread events are discarded): at most the answers to
    # its own retries. A new socket of a still owns the job.
    while b.poll(300):
        m = msgpack.unpackb(b.recv(), raw=False)
        assert "event" not in m and m["error"]["code"] == "forbidden", m
    a2 = curve.connect(0)
    assert [j["job"] for j in call(a2, "jobs")["jobs"]] == [job]
    assert call(b, "jobs")["ok"] is False


def test_cancel_permission_and_quota_are_per_peer(curve):
    curve("--set", "max_jobs_per_peer=2", "--set", "batch_max=1")
    a1, a2, b = curve.connect(0), curve.connect(0), curve.connect(1)
    blocker = call(a1, "submit", prompt="blocker", steps=100, width=64, height=64)["job"]
    wait_for(lambda: call(a1, "job", job=blocker)["state"] == "running", what="running")
    q1 = call(a1, "submit", prompt="q1", **TINY)["job"]
    call(a2, "submit", prompt="q2", **TINY)
    # a's two sockets share one quota: the third queued job is refused, on either socket.
    r = call(a2, "submit", prompt="q3", **TINY)
    assert r["ok"] is False and r["error"]["code"] == "busy", r
    assert r["error"]["limit"] == "max_jobs_per_peer"
    assert call(b, "submit", prompt="b's", **TINY)["ok"]
    # Only a may cancel a's jobs, from any of its sockets.
    r = call(b, "cancel", job=q1)
    assert r["ok"] is False and r["error"]["code"] == "forbidden"
    assert call(a2, "cancel", job=q1)["state"] == "canceled"
    assert call(a1, "cancel", job=blocker)["ok"]


def test_fairness_is_per_peer(curve):
    curve("--set", "batch_max=1")
    a = [curve.connect(0) for _ in range(4)]
    b = curve.connect(1)
    blocker = call(b, "submit", prompt="blocker", steps=60, width=64, height=64)["job"]
    wait_for(lambda: call(b, "job", job=blocker)["state"] == "running", what="running")
    mine = {}
    for k in range(3):
        for i, z in enumerate(a):
            mine[call(z, "submit", prompt=f"a{i}.{k}", seed=k, **TINY)["job"]] = "a"
    for k in range(6):
        mine[call(b, "submit", prompt=f"b{k}", seed=k, **TINY)["job"]] = "b"
    call(b, "cancel", job=blocker)
    status = {}
    for j in mine:
        status[j] = wait_for(lambda: (lambda s: s["state"] == "done" and s)(call(b, "job", job=j)),
                             timeout=120, what="done")
    order = [mine[j] for j in sorted(mine, key=lambda j: status[j]["started"])]
    # Four sockets of a are one peer: the first twelve starts alternate a, b.
    assert order[:12].count("b") == 6, order


def test_controlled_jobs_take_more_turns(curve):
    # A FOCUS-controlled job costs its peer 2.5 turns of the fair order (SCHED_FOCUS_STEP_COST):
    # a's two controlled jobs go third and sixth among b's plain ones, not first and third.
    curve("--set", "batch_max=1")
    a, b = curve.connect(0), curve.connect(1)
    blocker = call(b, "submit", prompt="blocker", steps=60, width=64, height=64)["job"]
    wait_for(lambda: call(b, "job", job=blocker)["state"] == "running", what="running")
    controlled = [call(a, "submit", prompt="A horse in a forest", subjects=["horse"], seed=k,
                       **TINY)["job"] for k in range(2)]
    plain = [call(b, "submit", prompt=f"b{k}", seed=k, **TINY)["job"] for k in range(6)]
    assert [call(a, "job", job=j)["position"] for j in controlled] == [2, 5]
    assert [call(b, "job", job=j)["position"] for j in plain] == [0, 1, 3, 4, 6, 7]
    for z, j in [(a, j) for j in controlled] + [(b, j) for j in plain + [blocker]]:
        assert call(z, "cancel", job=j)["ok"]


def test_sessions_bounded_per_peer_and_in_all(curve):
    curve("--set", "max_sessions_per_peer=2", "--set", "max_sessions=3")
    a1, a2, a3 = curve.connect(0), curve.connect(0), curve.connect(0)
    hello = call(a1, "hello")
    assert hello["limits"]["max_sessions_per_peer"] == 2 and hello["limits"]["max_sessions"] == 3
    assert call(a2, "ping")["ok"]
    r = call(a3, "ping")
    assert (r["ok"], r["error"]["code"], r["error"]["limit"]) == \
        (False, "busy", "max_sessions_per_peer")
    b1, b2 = curve.connect(1), curve.connect(1)
    assert call(b1, "ping")["ok"]
    r = call(b2, "ping")
    assert (r["ok"], r["error"]["code"], r["error"]["limit"]) == (False, "busy", "max_sessions")


def test_hello_lists_every_limit(daemon):
    lim = daemon.client().hello()["limits"]
    for key in ("max_frame", "max_queue", "max_jobs_per_peer", "max_job_pixels", "batch_max",
                "memory_limit", "client_buffer", "client_backlog", "max_sessions",
                "max_sessions_per_peer", "session_timeout", "retention_age", "retention_bytes",
                "max_request", "jobs_limit_max"):
        assert key in lim, key
    assert lim["max_frame"] == 16 << 20 and lim["max_request"] == 65536


def test_jobs_lists_only_the_callers_own(curve):
    curve()
    a, a2, b = curve.connect(0), curve.connect(0), curve.connect(1)
    ja = call(a, "submit", prompt="a's", **TINY)["job"]
    jb = call(b, "submit", prompt="b's", **TINY)["job"]
    assert [j["job"] for j in call(a2, "jobs")["jobs"]] == [ja]
    assert [j["job"] for j in call(b, "jobs")["jobs"]] == [jb]
