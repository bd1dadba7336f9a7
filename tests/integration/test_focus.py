"""The FOCUS test-time control through the daemon: a controlled job completes, its PNG is
focus-run's for the same subjects and lambda byte for byte, with the control's text chunks, and
its params echo the control; subjects by token positions; lambda 0 gives the plain job's bytes;
bad subjects are refused at submission naming the field; a queued controlled job keeps its
control across a restart; a store written before the control gains its columns and keeps its
jobs. Each with the SQLite store and with a PostgreSQL one."""

import os
import sqlite3

import pytest

from conftest import (assert_same_png, focus_run_png, focusd_client, png_pixels, png_text,
                      store_param, wait_state)

PROMPT = "A horse and a bear in a forest"
PARAMS = dict(seed=5, steps=2, width=64, height=64, guidance=4.5)
# The same job for focus-run generate.
RUN_ARGS = ("--seed", "5", "--steps", "2", "--width", "64", "--height", "64", "--cfg", "4.5")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request):
    """Every test here runs against both stores."""
    return store_param(request)


def run_job(c, prompt=PROMPT, **focus):
    """A job of PARAMS with the FOCUS fields given, run to its end: its id and its PNG."""
    job = c.submit(prompt, watch=True, **PARAMS, **focus)
    events = list(c.events(job, timeout=60))
    assert events[-1]["event"] == "done", events[-1]
    return job, c.fetch(job)["png"]


def test_controlled_job_matches_focus_run(daemon, workdir):
    c = daemon.client()
    job, ours = run_job(c, subjects=["horse", "bear"], focus_lambda=4)
    params = c.job(job)["params"]
    assert params["subjects"] == ["horse", "bear"]
    assert params["focus_lambda"] == 4.0 and params["focus_heuristic"] == "focus"
    text = png_text(ours)
    assert text[b"focus_subjects"] == b"horse | bear" and text[b"focus_lambda"] == b"4"
    assert text[b"focus_heuristic"] == b"focus"
    ref = focus_run_png(workdir, PROMPT, *RUN_ARGS, "--focus-subject", "horse", "--focus-subject",
                        "bear", "--focus-lambda", "4")
    assert_same_png(ours, ref)
    # A plain job's params have no FOCUS fields, and the control did change the image.
    plain, plain_png = run_job(c)
    assert not {"subjects", "focus_lambda", "focus_heuristic"} & set(c.job(plain)["params"])
    assert png_pixels(plain_png) != png_pixels(ours)


def test_subjects_by_positions(daemon, workdir):
    c = daemon.client()
    subjects = [{"phrase": "horse", "t5": [1], "clip": [2]}, {"t5": [5], "clip": [5]}]
    job, ours = run_job(c, subjects=subjects, focus_lambda=2.5,
                        focus_heuristic="attend_and_excite")
    params = c.job(job)["params"]
    assert params["subjects"] == subjects and params["focus_heuristic"] == "attend_and_excite"
    assert png_text(ours)[b"focus_subjects"] == b"t5=1;clip=2 | t5=5;clip=5"
    ref = focus_run_png(workdir, PROMPT, *RUN_ARGS, "--focus-tokens", "t5=1;clip=2",
                        "--focus-tokens", "t5=5;clip=5", "--focus-lambda", "2.5",
                        "--focus-heuristic", "attend_and_excite")
    assert_same_png(ours, ref)


def test_lambda_zero_is_the_plain_job(daemon):
    c = daemon.client()
    off, off_png = run_job(c, subjects=["horse", "bear"], focus_lambda=0)
    _, plain_png = run_job(c)
    assert off_png == plain_png
    assert c.job(off)["params"]["focus_lambda"] == 0.0


def test_bad_subjects_refused_at_submission(daemon):
    c = daemon.client()
    cases = [
        (dict(subjects=["horse", "bear"]), "A horse in a forest", "subjects", "'bear'"),
        (dict(subjects=["horse", {"t5": [1], "clip": [2]}]), PROMPT, "subjects", "share"),
        (dict(subjects=[{"t5": [1], "tokens": [2]}]), PROMPT, "subjects", "unknown key"),
        (dict(subjects=["x"] * 9), PROMPT, "subjects", "1 to 8"),
        (dict(subjects=["horse"], count=2), PROMPT, "count", "one latent"),
        (dict(subjects=["horse"], focus_lambda=-1), PROMPT, "focus_lambda", "out of range"),
        (dict(subjects=["horse"], focus_heuristic="kl"), PROMPT, "focus_heuristic", "one of"),
    ]
    for fields, prompt, field, words in cases:
        with pytest.raises(focusd_client.FocusdError) as e:
            c.submit(prompt, **PARAMS, **fields)
        assert (e.value.code, e.value.field) == ("bad_field", field), fields
        assert words in e.value.message, (fields, e.value.message)
    assert c.jobs() == []


def test_controlled_job_survives_restart(make_daemon):
    d = make_daemon(args=["--set", "batch_max=1"])
    c = d.client()
    blocker = c.submit("long", steps=200, width=64, height=64)
    wait_state(c, blocker, ("running",))
    job = c.submit(PROMPT, subjects=["horse", {"phrase": "bear", "t5": [5], "clip": [5]}],
                   focus_lambda=3, focus_heuristic="divide_and_bind", **PARAMS)
    assert d.stop() == 0
    d.close_clients()
    d.start()
    c = d.client()
    params = c.job(job)["params"]
    assert params["subjects"] == ["horse", {"phrase": "bear", "t5": [5], "clip": [5]}]
    assert params["focus_lambda"] == 3.0 and params["focus_heuristic"] == "divide_and_bind"
    c.cancel(blocker)
    assert wait_state(c, job)["params"] == params
    restored = c.fetch(job)["png"]
    text = png_text(restored)
    assert text[b"focus_subjects"] == b"horse | t5=5;clip=5"
    assert text[b"focus_heuristic"] == b"divide_and_bind"
    # The same request made afresh gives the same bytes: the control came back whole.
    _, fresh = run_job(c, subjects=params["subjects"], focus_lambda=3,
                       focus_heuristic="divide_and_bind")
    assert fresh == restored


def test_store_from_before_the_control(make_daemon, store, request):
    """A queued job in a store without the FOCUS columns (SQLite's added on open, PostgreSQL's
    schema version 2) runs plain after the upgrade, and the new columns then take jobs."""
    d = make_daemon(args=["--set", "batch_max=1"])
    c = d.client()
    blocker = c.submit("long", steps=200, width=64, height=64)
    wait_state(c, blocker, ("running",))
    old = c.submit(PROMPT, **PARAMS)
    assert d.stop() == 0
    d.close_clients()
    drop = ("ALTER TABLE jobs DROP COLUMN focus_subjects; ALTER TABLE jobs DROP COLUMN"
            " focus_lambda; ALTER TABLE jobs DROP COLUMN focus_heuristic;")
    if store == "sqlite":
        db = sqlite3.connect(os.path.join(d.state, "jobs.db"))
        db.executescript(drop)
        db.close()
    else:
        request.getfixturevalue("postgres").sql(store,
                                                drop + " UPDATE schema_version SET version = 1")
    d.start()
    c = d.client()
    c.cancel(blocker)
    assert "subjects" not in wait_state(c, old)["params"]
    if store != "sqlite":  # migrated at the first start, and again at the second
        assert d.read_log().count("schema version 2") == 2
    job = c.submit(PROMPT, subjects=["horse"], focus_lambda=0, **PARAMS)
    assert wait_state(c, job)["params"]["subjects"] == ["horse"]
