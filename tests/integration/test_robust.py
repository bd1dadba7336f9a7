"""Untrusted input: malformed, truncated, oversized, deeply nested and wrongly typed frames
get error replies naming the problem, and the daemon keeps serving."""

import msgpack
import pytest
import zmq


@pytest.fixture
def raw(daemon):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 5000)
    s.connect(daemon.endpoint)
    yield s
    s.close()


def ask(sock, *frames):
    sock.send_multipart(list(frames))
    return msgpack.unpackb(sock.recv(), raw=False)


def req(**fields):
    return msgpack.packb(dict({"v": 1, "id": 9}, **fields))


def nested(depth):
    obj = 1
    for _ in range(depth):
        obj = [obj]
    return {"v": 1, "id": 9, "op": "ping", "x": obj}


CASES = [
    ("not msgpack", b"\xc1\xc1\xc1", "bad_message", None),
    ("empty frame", b"", "bad_message", None),
    ("truncated map", req(op="submit", prompt="a cat")[:-3], "bad_message", None),
    ("not a map", msgpack.packb([1, 2, 3]), "bad_message", None),
    ("trailing bytes", req(op="ping") + b"\x00", "bad_message", None),
    ("oversized", req(op="ping", pad="x" * 70000), "bad_message", None),
    ("deeply nested", msgpack.packb(nested(100)), "bad_message", None),
    ("huge declared array", b"\x81\xa1x\xdd\xff\xff\xff\xff", "bad_message", None),
    ("wrong version", msgpack.packb({"v": 2, "id": 9, "op": "ping"}), "unsupported_version", None),
    ("unknown op", req(op="launch"), "unknown_op", None),
    ("op not a string", req(op=5), "bad_field", "op"),
    ("steps a string", req(op="submit", prompt="a", steps="ten"), "bad_field", "steps"),
    ("seed negative", req(op="submit", prompt="a", seed=-1), "bad_field", "seed"),
    ("prompt missing", req(op="submit"), "bad_field", "prompt"),
    ("prompt too long", req(op="submit", prompt="x" * 5000), "bad_field", "prompt"),
    ("width not a multiple", req(op="submit", prompt="a", width=100), "bad_field", "width"),
    ("guidance nan", req(op="submit", prompt="a", guidance=float("nan")), "bad_field", "guidance"),
    ("job not a string", req(op="job", job=[1]), "bad_field", "job"),
    ("fetch index huge", req(op="fetch", job="j1", index=2**40), "bad_field", "index"),
    ("jobs bad state", req(op="jobs", state="sleeping"), "bad_field", "state"),
    # A key twice, one the op does not even define: refused, naming it.
    ("duplicate key", b"\x85\xa1v\x01\xa2id\x09\xa2op\xa4ping\xa1x\x01\xa1x\x02", "bad_field",
     "x"),
    ("duplicate key in submit", b"\x85\xa1v\x01\xa2id\x09\xa2op\xa6submit\xa6prompt\xa1a"
     b"\xa6prompt\xa1b", "bad_field", "prompt"),
    ("invalid utf-8", b"\x83\xa1v\x01\xa2id\x09\xa2op\xa4\xff\xfe\xfd\xfc", "bad_message", None),
]


@pytest.mark.parametrize("name,frame,code,field", CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_error(daemon, raw, name, frame, code, field):
    r = ask(raw, frame)
    assert r["ok"] is False, r
    assert r["error"]["code"] in (code, "bad_message" if code == "bad_field" else code), r
    if field and r["error"]["code"] == "bad_field":
        assert r["error"]["field"] == field, r
    assert ask(raw, req(op="ping"))["ok"] is True


def test_multipart_request_refused(daemon, raw):
    r = ask(raw, req(op="ping"), req(op="ping"))
    assert r["ok"] is False and r["error"]["code"] == "bad_message"
    assert ask(raw, req(op="ping"))["ok"] is True


def test_frame_past_transport_limit_drops_only_that_peer(daemon):
    ctx = zmq.Context.instance()
    bad = ctx.socket(zmq.DEALER)
    bad.setsockopt(zmq.LINGER, 0)
    bad.connect(daemon.endpoint)
    bad.send(b"\x00" * (32 << 20))  # past the 16 MiB the socket reads
    bad.close()
    c = daemon.client(timeout=5)
    c.ping()
    assert daemon.proc.poll() is None


def test_garbage_storm_then_service(daemon, raw):
    import random
    rnd = random.Random(1)
    for _ in range(2000):
        raw.send(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 64))))
    got = 0
    for _ in range(2000):
        m = msgpack.unpackb(raw.recv(), raw=False)
        assert m["ok"] is False
        got += 1
    assert got == 2000
    c = daemon.client(timeout=5)
    c.ping()
    assert daemon.proc.poll() is None
