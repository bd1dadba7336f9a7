"""Access control: the ipc socket file's mode, and the ZAP handler admitting only the
configured users and groups by the peer credentials libzmq passes it."""

import os
import pwd
import stat

import pytest

from conftest import focusd_client

ME = pwd.getpwuid(os.getuid()).pw_name


def test_socket_mode(make_daemon):
    d = make_daemon(args=["--set", "socket_mode=0600"])
    assert stat.S_IMODE(os.stat(d.sock).st_mode) == 0o600
    d.client().ping()


def test_zap_refuses_other_users(make_daemon):
    if os.getuid() == pwd.getpwnam("nobody").pw_uid:
        pytest.skip("running as nobody")
    d = make_daemon(args=["--set", "allow_users=nobody"])
    c = d.client(timeout=2)
    with pytest.raises(TimeoutError):
        c.ping()
    assert "access refused: NULL peer" in d.read_log()
    assert f"user {os.getuid()}" in d.read_log()
    assert d.proc.poll() is None


def test_zap_admits_listed_user_and_group(make_daemon):
    d = make_daemon(args=["--set", f"allow_users=nobody,{ME}"])
    d.client(timeout=5).ping()
    d2 = make_daemon(args=["--set", "allow_users=nobody", "--set", f"allow_groups={os.getgid()}"],
                     sub="g")
    d2.client(timeout=5).ping()


def test_unknown_user_is_a_config_error(make_daemon):
    d = make_daemon(args=["--set", "allow_users=no-such-user-here"], start=False)
    d.start(wait=False)
    assert d.proc.wait(10) == 1
    assert "no user \"no-such-user-here\"" in d.read_log()


def test_tcp_needs_curve_and_an_authorised_key(make_daemon, workdir):
    import socket as pysocket

    import msgpack
    import zmq

    server_pub, server_sec = zmq.curve_keypair()
    good_pub, good_sec = zmq.curve_keypair()
    bad_pub, bad_sec = zmq.curve_keypair()
    with open(os.path.join(workdir, "server.key"), "wb") as f:
        f.write(b"# focusd server\n" + server_sec + b"\n")
    with open(os.path.join(workdir, "clients.keys"), "wb") as f:
        f.write(b"# admitted\n" + good_pub + b"\n")
    with pysocket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = make_daemon(args=["--set", f"tcp=tcp://127.0.0.1:{port}",
                          "--set", f"curve_secret_key_file={workdir}/server.key",
                          "--set", f"curve_authorized_keys={workdir}/clients.keys"])

    def ping(pub, sec):
        z = zmq.Context.instance().socket(zmq.DEALER)
        z.setsockopt(zmq.LINGER, 0)
        z.curve_serverkey, z.curve_publickey, z.curve_secretkey = server_pub, pub, sec
        z.connect(f"tcp://127.0.0.1:{port}")
        z.send(msgpack.packb({"v": 1, "id": 1, "op": "ping"}))
        ok = z.poll(2000)
        reply = msgpack.unpackb(z.recv()) if ok else None
        z.close()
        return reply

    assert ping(good_pub, good_sec)["ok"] is True
    assert ping(bad_pub, bad_sec) is None
    assert "access refused: CURVE" in d.read_log()
    # Without CURVE the tcp endpoint is refused as a configuration error.
    d2 = make_daemon(args=["--set", f"tcp=tcp://127.0.0.1:{port + 1}"], start=False, sub="x")
    d2.start(wait=False)
    assert d2.proc.wait(10) == 2
