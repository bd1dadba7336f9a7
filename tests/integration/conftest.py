"""Fixtures for the integration tests: each test runs the real build/focusd (or $FOCUSD) on
a temporary ipc socket and state directory with the fixture model tests/fixtures/tiny-sd35,
and talks to it over real ZeroMQ sockets with client/python/focusd_client.py. The job store is
SQLite unless a test asks for the `store` fixture's postgresql value: then a real PostgreSQL
server (Debian's, started with initdb and pg_ctl in a temporary directory, on a Unix socket
only) gives each test a database of its own.

Needs pyzmq, msgpack and pytest. Run from the repository root: pytest tests/integration."""

import glob
import os
import pwd
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "client", "python"))

import focusd_client  # noqa: E402

BUILD = os.environ.get("BUILD", "build")
FOCUSD = os.environ.get("FOCUSD", os.path.join(ROOT, BUILD, "focusd"))
MODEL = os.path.join(ROOT, "tests", "fixtures", "tiny-sd35")
# The cheapest job the fixture model runs: CFG off, one step, the smallest size.
TINY = dict(steps=1, width=64, height=64, guidance=0.0)


class Daemon:
    """One focusd process. args: extra command-line arguments; conf: focusd.conf text."""

    def __init__(self, workdir, args=(), conf=None, env=None):
        self.dir = workdir
        self.sock = os.path.join(workdir, "focusd.sock")
        self.endpoint = "ipc://" + self.sock
        self.state = os.path.join(workdir, "state")
        self.log = os.path.join(workdir, "focusd.log")
        self.conf = None
        if conf is not None:
            self.conf = os.path.join(workdir, "focusd.conf")
            with open(self.conf, "w") as f:
                f.write(conf)
        self.args = list(args)
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        self.clients = []

    def command(self):
        cmd = [FOCUSD, "--listen", self.endpoint, "--state-dir", self.state, "--device", "cpu"]
        if self.conf:
            cmd += ["--config", self.conf]
        else:
            cmd += ["--model", "tiny=" + MODEL]
        return cmd + self.args

    def start(self, wait=True):
        logf = open(self.log, "a")
        self.proc = subprocess.Popen(self.command(), stdout=logf, stderr=logf, env=self.env)
        logf.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"focusd exited with {self.proc.returncode}:\n{self.read_log()}"
            if "<6>ready" in self.read_log():
                return
            time.sleep(0.05)
        raise AssertionError("focusd did not become ready:\n" + self.read_log())

    def read_log(self):
        with open(self.log) as f:
            return f.read()

    def client(self, timeout=30.0):
        c = focusd_client.Client(self.endpoint, timeout=timeout)
        self.clients.append(c)
        return c

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=30):
        """SIGTERM, then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill9(self):
        self.proc.kill()
        self.proc.wait(10)

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def close_clients(self):
        for c in self.clients:
            c.close()
        self.clients = []


@pytest.fixture(scope="session")
def fault_lib(tmp_path_factory):
    """tests/integration/fault_inject.c built into a library to preload into focusd."""
    out = str(tmp_path_factory.mktemp("faults") / "fault_inject.so")
    src = os.path.join(os.path.dirname(__file__), "fault_inject.c")
    subprocess.run([os.environ.get("CC", "cc"), "-shared", "-fPIC", "-O1", "-o", out, src,
                    "-ldl"], check=True)
    return out


def fault_env(lib, control):
    """The environment that preloads lib into focusd, armed by the file control."""
    env = {"LD_PRELOAD": lib, "FOCUSD_FAULTS": control}
    # A sanitizer build wants its runtime first; the preloaded library only wraps libc and
    # SQLite functions, which the runtime does not intercept.
    env["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"
    return env


@pytest.fixture
def workdir():
    # ipc paths must fit sun_path (108 bytes): keep the directory short.
    with tempfile.TemporaryDirectory(prefix="focusd-it-") as d:
        yield d


class Postgres:
    """A PostgreSQL server of its own in base (data and socket directories), listening on a
    Unix socket only; run as `nobody` when the tests run as root, since postgres refuses root.
    Each database() is a fresh database and its libpq URI. fsync: off for the tests, whose
    restarts are process crashes that the page cache survives; on for benchmarks."""

    def __init__(self, base, fsync=False):
        self.fsync = fsync
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins:
            raise RuntimeError("no PostgreSQL server: install Debian's postgresql (make deps)")
        self.bin = os.path.dirname(bins[-1])
        self.base = base
        self.data = os.path.join(base, "data")
        self.sock = os.path.join(base, "sock")
        self.log = os.path.join(base, "postgres.log")
        self.port = 20000 + os.getpid() % 20000
        self.user = "nobody" if os.geteuid() == 0 else None
        self.count = 0
        os.makedirs(self.sock)
        if self.user:
            pw = pwd.getpwnam(self.user)
            for d in (base, self.sock):
                os.chown(d, pw.pw_uid, pw.pw_gid)
        self.run("initdb", "-D", self.data, "-U", "focusd", "--auth=trust", "-E", "UTF8",
                 "--no-sync")

    def run(self, tool, *args, check=True):
        return subprocess.run([os.path.join(self.bin, tool), *args], user=self.user,
                              capture_output=True, text=True, check=check, cwd=self.base)

    def start(self):
        opts = (f"-c listen_addresses='' -k {self.sock} -p {self.port}"
                f" -c fsync={'on' if self.fsync else 'off'} -c max_connections=50")
        self.run("pg_ctl", "start", "-w", "-t", "60", "-D", self.data, "-l", self.log, "-o", opts)

    def stop(self, mode="immediate"):
        self.run("pg_ctl", "stop", "-w", "-D", self.data, "-m", mode, check=False)

    def restart(self):
        self.stop("immediate")
        self.start()

    def uri(self, db):
        return f"postgresql://focusd@/{db}?host={self.sock}&port={self.port}"

    def database(self):
        self.count += 1
        name = f"focusd{self.count}"
        self.run("createdb", "-h", self.sock, "-p", str(self.port), "-U", "focusd", name)
        return self.uri(name)

    def sql(self, db_uri, query):
        """psql's unaligned output of one query."""
        return self.run("psql", "-X", "-A", "-t", "-d", db_uri, "-c", query).stdout.strip()


@pytest.fixture(scope="session")
def postgres():
    base = tempfile.mkdtemp(prefix="focusd-pg-")
    os.chmod(base, 0o755)
    pg = Postgres(base)
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()  # even when a test failed, so that no server outlives the tests
        subprocess.run(["rm", "-rf", base])


@pytest.fixture
def store():
    """The store the daemons of a test use: sqlite, or a fresh PostgreSQL database's URI.
    Modules that run against both override it with a parametrised fixture (store_params)."""
    return "sqlite"


def store_param(request):
    """The body of a parametrised store fixture: request.param is sqlite or postgresql."""
    if request.param == "sqlite":
        return "sqlite"
    return request.getfixturevalue("postgres").database()


# Leases short enough that a test sees a dead daemon's jobs taken over in a few seconds.
LEASE = "2s"


def store_args(store):
    return [] if store == "sqlite" else ["--store", store, "--set", "lease_time=" + LEASE]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the test, for fixtures to see whether it failed."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def make_daemon(workdir, store, request):
    made = []

    def make(args=(), conf=None, env=None, start=True, sub=None):
        d = workdir if sub is None else os.path.join(workdir, sub)
        os.makedirs(d, exist_ok=True)
        dm = Daemon(d, store_args(store) + list(args), conf, env)
        made.append(dm)
        return dm.start() if start else dm

    yield make
    call = getattr(request.node, "rep_call", None)
    if call is not None and call.failed:  # the daemons' side of the story, for the report
        for dm in made:
            if dm.proc:
                print(f"---- {dm.log} (last 6000 bytes)\n{dm.read_log()[-6000:]}")
    problems = []
    for dm in made:
        dm.close_clients()
        if dm.proc and dm.proc.poll() is None:
            # A clean stop at the end of every test, so that a sanitizer build reports leaks.
            dm.proc.send_signal(signal.SIGTERM)
            try:
                dm.proc.wait(30)
            except subprocess.TimeoutExpired:
                dm.proc.kill()
                dm.proc.wait(10)
                problems.append("focusd did not stop on SIGTERM")
        if dm.proc:
            log = dm.read_log()
            for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
                if marker in log:
                    problems.append(log[log.index(marker) - 200:][:3000])
    assert not problems, "\n".join(problems)


@pytest.fixture
def daemon(make_daemon):
    return make_daemon()


def auto_precision():
    """What precision = auto gives on this CPU: bf16 where it multiplies bf16 natively."""
    with open("/proc/cpuinfo") as f:
        flags = f.read().split()
    return "bf16" if "avx512_bf16" in flags or "amx_bf16" in flags else "fp32"


def wait_for(pred, timeout=30.0, step=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def wait_state(client, job, states=("done",), timeout=60.0):
    return wait_for(lambda: client.job(job)["state"] in states and client.job(job), timeout,
                    what=f"job {job} in {states}")


def wait_expired(client, job, timeout=10.0):
    """Waits until retention has removed job: its status then answers expired."""
    def expired():
        try:
            client.job(job)
            return False
        except focusd_client.FocusdError as e:
            return e.code == "expired"
    wait_for(expired, timeout, what=f"job {job} expired")


def notify_socket(path):
    """A datagram socket bound where NOTIFY_SOCKET will point, as systemd's is."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.2)
    return s


def png_chunks(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, chunks = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in chunk {kind}"
        chunks.append((kind, body))
        pos += 12 + n
    return chunks


def png_pixels(data):
    """(width, height, raw scanlines): the decompressed IDAT stream of an 8-bit RGB PNG."""
    chunks = png_chunks(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    w, h, depth, color = struct.unpack(">IIBB", chunks[0][1][:10])
    assert (depth, color) == (8, 2), "expected 8-bit RGB"
    raw = zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT"))
    assert len(raw) == h * (1 + 3 * w)
    return w, h, raw


def png_text(data):
    return dict(b.split(b"\0", 1) for k, b in png_chunks(data) if k == b"tEXt")


def focus_run_png(workdir, prompt, *args):
    """The PNG that focus-run generate writes for prompt with args on the fixture model."""
    focus_run = os.path.join(ROOT, BUILD, "focus-run")
    probe = subprocess.run([focus_run, "generate", "--help"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("focus-run generate is not built yet: cannot compare the PNG with it")
    out = os.path.join(workdir, "ref.png")
    subprocess.run([focus_run, "generate", "--model", MODEL, "--prompt", prompt, "--device", "cpu",
                    "--output", out, *args], check=True, capture_output=True)
    with open(out, "rb") as f:
        return f.read()


def assert_same_png(ours, ref):
    """Same pixels, same encoder settings: the image data is byte-identical. The text chunks
    differ only where they name the program and the model."""
    assert png_pixels(ours) == png_pixels(ref)
    assert [c for c in png_chunks(ours) if c[0] != b"tEXt"] == \
        [c for c in png_chunks(ref) if c[0] != b"tEXt"]
    differ = {k for k, v in png_text(ours).items() if png_text(ref).get(k) != v}
    assert differ <= {b"Software", b"model"}, differ
