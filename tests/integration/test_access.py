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
