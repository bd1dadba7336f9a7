"""Several daemons sharing one queue on a real PostgreSQL server (the postgres fixture): jobs
from clients of different daemons each done exactly once, a daemon killed mid-step whose jobs
finish on the others, a cancel and a watch across daemons, the database restarted under load,
and a clear refusal to start without a database. All daemons of a test share one state
directory, whose images/ stands for the directory that several hosts mount."""

import os
import re
import time

import pytest

from conftest import LEASE, TINY, focusd_client, wait_for, wait_state

# A job that runs long enough to be watched and canceled mid-way, even on a fast machine,
# and that is still running when a test on a loaded one gets round to canceling it.
LONG = dict(steps=200, width=512, height=512)


@pytest.fixture
def store(postgres):
    return postgres.database()


@pytest.fixture
def cluster(make_daemon, workdir):
    """start(n, *args): n daemons on the test's database, one state directory between them,
    each logging every job it finishes."""
    shared = os.path.join(workdir, "shared")

    def start(n, *args):
        return [make_daemon(args=["--state-dir", shared, "--set", "log_level=debug", *args],
                            sub=f"d{i}") for i in range(n)]
    return start


def finished_here(daemon):
    """The jobs this daemon ran to their end, as its log says, with the state each ended in."""
    return re.findall(r"job (j[0-9a-f]+): (done|failed|canceled)", daemon.read_log())


def ends_by_job(daemons):
    ends = {}
    for d in daemons:
        for job, state in finished_here(d):
            ends.setdefault(job, []).append((d.dir, state))
    return ends


def held_by(postgres, store, job):
    """The lease holder of job, as the row says ("" when none)."""
    return postgres.sql(store, f"SELECT lease_owner FROM jobs WHERE id = '{job}'")


def test_three_daemons_share_one_queue(cluster, postgres, store):
    # 300 jobs from 12 clients, 4 on each daemon; the clients are one peer (this uid).
    daemons = cluster(3, "--set", "batch_max=2", "--set", "max_jobs_per_peer=1000")
    clients = [d.client() for d in daemons for _ in range(4)]
    jobs = {}
    for i in range(300):
        c = clients[i % len(clients)]
        jobs[c.submit(f"shared {i}", seed=i, **TINY)] = c
    for job, c in jobs.items():
        st = wait_state(c, job, timeout=180)
        assert st["images"] == 1
        # Any daemon's client fetches the image, whichever daemon made it.
        img = clients[(list(jobs).index(job) + 1) % len(clients)].fetch(job)
        assert img["png"][:8] == b"\x89PNG\r\n\x1a\n"
    ends = ends_by_job(daemons)
    assert {j: [s for _, s in e] for j, e in ends.items() if j in jobs} == \
        {j: ["done"] for j in jobs}, "each job finished exactly once, by one daemon"
    assert len({ends[j][0][0] for j in jobs}) >= 2, "the work was spread over the daemons"
    assert postgres.sql(store, "SELECT count(*) FROM jobs WHERE state = 'done'"
                        " AND lease_owner = ''") == str(len(jobs))
    assert postgres.sql(store, "SELECT count(*) FROM images") == str(len(jobs))


def test_kill9_mid_step_jobs_finish_on_the_others(cluster, postgres, store):
    # Room for every job on the survivors (2 x 4 slots for 6 jobs), so that the victim's are
    # taken over as soon as their leases expire, not once a survivor has finished its own.
    daemons = cluster(3, "--set", "batch_max=4")
    victim = daemons[0]
    c = victim.client()
    jobs = [c.submit(f"survivor {i}", seed=i, steps=200, width=64, height=64) for i in range(6)]
    owner = victim.dir.rstrip("/")
    # Wait until the victim is stepping a job of its own.
    running = wait_for(lambda: postgres.sql(
        store, "SELECT id FROM jobs WHERE state = 'running' AND lease_owner LIKE"
        f" '%{owner}/%' LIMIT 1"), timeout=60, what="a job running on the victim")
    victim.kill9()
    killed = time.monotonic()
    victim.close_clients()
    # Taken over once its lease has expired, from step 0.
    def taken_over():
        holder = held_by(postgres, store, running)
        state = postgres.sql(store, f"SELECT state FROM jobs WHERE id = '{running}'")
        return (holder and owner not in holder) or state == "done"
    wait_for(taken_over, timeout=30, what="the takeover")
    takeover = time.monotonic() - killed
    assert takeover < float(LEASE.rstrip("s")) * 3 + 5
    other = daemons[1].client()
    for j in jobs:
        assert wait_state(other, j, timeout=120)["images"] == 1
    ends = ends_by_job(daemons)
    assert all(len(ends.get(j, [])) == 1 for j in jobs), ends
    assert running not in dict(finished_here(victim))
    print(f"takeover {takeover:.2f} s after kill -9 (lease_time {LEASE})")


def test_watch_wait_and_cancel_across_daemons(cluster, postgres, store):
    a, b = cluster(2, "--set", "batch_max=1")
    ca, cb = a.client(), b.client()
    job = ca.submit("long on a", **LONG)
    wait_for(lambda: a.dir.rstrip("/") in held_by(postgres, store, job), what="a holds it")
    wait_state(ca, job, ("running",))
    # A client of b follows the job a runs: its progress, then its end.
    cb.watch(job)
    progress = next(e for e in cb.events(job, timeout=30) if e["event"] == "progress")
    assert progress["job"] == job and progress["step"] >= 1
    assert cb.job(job)["state"] == "running"
    cb.cancel(job)
    last = list(cb.events(job, timeout=30))[-1]
    assert last["event"] == "canceled"
    st = ca.job(job)
    assert st["state"] == "canceled" and st["step"] < LONG["steps"]
    assert finished_here(a) == [(job, "canceled")] and finished_here(b) == []
    # A wait on b for a job that a runs is answered when a finishes it.
    short = ca.submit("short on a", steps=20, width=64, height=64)  # a is idle: a takes it
    st = cb.wait(short, timeout=60)
    assert st["state"] == "done" and st["images"] == 1
    assert (short, "done") in finished_here(a)
    # A queued job that no daemon holds yet is canceled by b at once, in the reply.
    blocker = cb.submit("blocker on b", **LONG)
    wait_state(cb, blocker, ("running",))
    blocker_a = ca.submit("blocker on a", **LONG)
    wait_state(ca, blocker_a, ("running",))
    queued = ca.submit("queued", **TINY)
    assert cb.cancel(queued)["state"] == "canceled"
    assert ca.job(queued)["state"] == "canceled"
    with pytest.raises(focusd_client.FocusdError) as e:
        cb.fetch(queued)
    assert e.value.code == "not_found"
    assert cb.cancel(blocker)["state"] == "running"
    assert cb.cancel(blocker_a)["state"] == "running"
    for j in (blocker, blocker_a):
        assert wait_state(cb, j, ("canceled",))["state"] == "canceled"


def test_postgres_restart_under_load(cluster, postgres, store):
    daemons = cluster(2, "--set", "batch_max=2")
    clients = [d.client() for d in daemons]
    jobs = []
    for i in range(16):
        c = clients[i % 2]
        jobs.append((c, c.submit(f"load {i}", seed=i, steps=6, width=64, height=64)))
    wait_for(lambda: int(postgres.sql(store, "SELECT count(*) FROM jobs WHERE state IN"
                                      " ('running', 'done')")) >= 2, what="jobs under way")
    postgres.restart()
    for d in daemons:
        wait_for(lambda: "reconnected" in d.read_log(), timeout=30, what="a reconnection")
    for c, j in jobs:
        assert wait_state(c, j, timeout=180)["images"] == 1
    # Serving goes on: a job submitted after the restart runs too.
    after = clients[0].submit("after the restart", **TINY)
    assert wait_state(clients[1], after)["images"] == 1
    assert postgres.sql(store, "SELECT count(*) FROM jobs WHERE state = 'done'") == \
        str(len(jobs) + 1)


def test_refuses_to_start_without_its_database(make_daemon, workdir):
    missing = os.path.join(workdir, "nowhere")
    uri = f"postgresql://focusd:s3cret@/focusd?host={missing}"
    d = make_daemon(args=["--store", uri], start=False, sub="unreachable")
    d.start(wait=False)
    assert d.proc.wait(30) == 1
    log = d.read_log()
    assert "cannot connect" in log and "focusd:***@" in log and "s3cret" not in log
    bad = make_daemon(args=["--store", "mysql://localhost/focusd"], start=False, sub="bad")
    bad.start(wait=False)
    assert bad.proc.wait(10) == 2  # a configuration error
    assert 'key "store"' in bad.read_log() and "postgresql://" in bad.read_log()
    # A URI libpq cannot read is a configuration error too, and the password stays unsaid.
    bad = make_daemon(args=["--store", "postgresql://focusd:s3cret@/focusd?nosuch=1"],
                      start=False, sub="malformed")
    bad.start(wait=False)
    assert bad.proc.wait(10) == 2
    log = bad.read_log()
    assert 'key "store": not a valid PostgreSQL connection URI' in log and "nosuch" in log
    assert "s3cret" not in log
