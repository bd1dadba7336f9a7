"""A small client for focusd, speaking the protocol of focusd-protocol(7).

It needs pyzmq and msgpack (Debian: python3-zmq and python3-msgpack, which the package
python3-focusd-client depends on; elsewhere pip install pyzmq msgpack). One Client holds one
DEALER socket; requests are answered in order of their ids, and the events pushed for watched
jobs are kept until events() reads them. It is a convenience for scripts and tests, not a second
implementation of the daemon's checks: the daemon validates every request itself.

    from focusd_client import Client
    with Client("ipc:///run/focusd/focusd.sock") as c:
        job = c.submit("a lighthouse at dawn", seed=42, watch=True)
        for ev in c.events(job):
            print(ev)
        open("out.png", "wb").write(c.fetch(job)["png"])
"""

import collections
import hashlib
import itertools
import os
import time

import msgpack
import zmq

PROTOCOL_VERSION = 1
MAX_REQUEST = 64 * 1024
MAX_SERVER = 64 * 1024 * 1024
DEFAULT_ENDPOINT = os.environ.get("FOCUS_SOCKET", "ipc:///run/focusd/focusd.sock")

OPS = ("hello", "submit", "watch", "cancel", "job", "jobs", "fetch", "models", "stats", "ping",
       "wait")
EVENTS = ("queued", "started", "progress", "done", "failed", "canceled")
TERMINAL_EVENTS = ("done", "failed", "canceled")
SUBMIT_FIELDS = ("model", "prompt", "negative_prompt", "seed", "steps", "guidance", "width",
                 "height", "max_seq", "count", "priority", "subjects", "focus_lambda",
                 "focus_heuristic", "watch", "png")


class ProtocolError(Exception):
    """The daemon sent something this module cannot read."""


class FocusdError(Exception):
    """The daemon answered a request with ok false. limit: for busy, the hello limit hit."""

    def __init__(self, code, field, message, limit=None):
        super().__init__(f"{code}{' (' + field + ')' if field else ''}: {message}")
        self.code = code
        self.field = field
        self.message = message
        self.limit = limit


def encode_request(op, req_id, **fields):
    """The frame of one request: a MessagePack map of v, id, op and the op's fields. Fields
    whose value is None are left out (the daemon then applies its default)."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}")
    msg = {"v": PROTOCOL_VERSION, "id": req_id, "op": op}
    msg.update({k: v for k, v in fields.items() if v is not None})
    frame = msgpack.packb(msg, use_bin_type=True)
    if len(frame) > MAX_REQUEST:
        raise ValueError(f"request of {len(frame)} bytes exceeds {MAX_REQUEST}")
    return frame


def decode_message(frame):
    """A reply or an event as a dict; checks the envelope only."""
    if len(frame) > MAX_SERVER:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds {MAX_SERVER}")
    try:
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as e:
        raise ProtocolError(f"undecodable frame: {e}") from e
    if not isinstance(msg, dict):
        raise ProtocolError("frame is not a map")
    if msg.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {msg.get('v')!r}")
    if "event" in msg:
        if msg["event"] not in EVENTS or not isinstance(msg.get("job"), str):
            raise ProtocolError(f"malformed event {msg!r}")
    elif not isinstance(msg.get("ok"), bool) or "id" not in msg:
        raise ProtocolError("reply without id or ok")
    return msg


class Client:
    def __init__(self, endpoint=DEFAULT_ENDPOINT, timeout=30.0, context=None):
        """timeout: seconds to wait for a reply (None: forever)."""
        self.timeout = timeout
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._ids = itertools.count(1)
        self._events = collections.deque()

    def close(self):
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _recv(self, deadline):
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._sock.poll(None if wait is None else int(wait * 1000)):
            raise TimeoutError("no message from focusd")
        return decode_message(self._sock.recv())

    def request(self, op, **fields):
        """Sends one request and returns its reply's fields (without v, id, ok); raises
        FocusdError when the daemon answers ok false. Events that arrive meanwhile are kept
        for events()."""
        req_id = next(self._ids)
        self._sock.send(encode_request(op, req_id, **fields))
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            msg = self._recv(deadline)
            if "event" in msg:
                self._events.append(msg)
                continue
            if msg["id"] != req_id:
                continue  # the late reply of a request that timed out
            if not msg["ok"]:
                err = msg.get("error") or {}
                raise FocusdError(err.get("code", "failed"), err.get("field"),
                                  err.get("message", ""), err.get("limit"))
            return {k: v for k, v in msg.items() if k not in ("v", "id", "ok")}

    def hello(self, client="focusd_client.py"):
        return self.request("hello", client=client)

    def submit(self, prompt, **params):
        """Queues a job and returns its id. params: model, negative_prompt, seed, steps,
        guidance, width, height, max_seq, count, priority, watch, png (with watch: the done
        event carries the PNG files), and the FOCUS test-time control's:

        subjects: a list of 1 to 8 subjects of the prompt for the control to steer apart,
            each a phrase of the prompt ("horse"), or a dict of token positions as the FOCUS
            datasets list them, {"t5": [1], "clip": [2]} (T5 from 0 without BOS, CLIP with
            BOS at 0; at most 32 each), with an optional label "phrase". The daemon refuses a
            phrase the prompt does not have (bad_field, field "subjects"). The control takes
            count 1, and a controlled step costs about 2.5 plain ones.
        focus_lambda: its strength, 0 to 100 (daemon default 1); 0 gives the plain image.
        focus_heuristic: "focus" (the default), "attend_and_excite" or "divide_and_bind".

            c.submit("A horse and a bear in a forest", subjects=["horse", "bear"],
                     focus_lambda=4)
        """
        unknown = set(params) - set(SUBMIT_FIELDS)
        if unknown:
            raise TypeError(f"unknown submit fields {sorted(unknown)}")
        for name in ("guidance", "focus_lambda"):
            if params.get(name) is not None:
                params[name] = float(params[name])
        return self.request("submit", prompt=prompt, **params)["job"]

    def watch(self, job, png=None):
        """Subscribes to the job's events; returns its status. png: the done event carries
        the PNG files."""
        return self.request("watch", job=job, png=png)

    def wait(self, job, timeout=None):
        """The job's status once it has ended, or once timeout seconds (default 60, at most
        3600) have passed, whichever is first."""
        saved = self.timeout
        if self.timeout is not None:
            self.timeout = max(self.timeout, (60.0 if timeout is None else timeout) + 10)
        try:
            return self.request("wait", job=job,
                                timeout=None if timeout is None else float(timeout))
        finally:
            self.timeout = saved

    def cancel(self, job):
        return self.request("cancel", job=job)

    def job(self, job):
        return self.request("job", job=job)

    def jobs(self, state=None, limit=None, cursor=None):
        """This peer's jobs, newest first, one page; jobs_page() also gives the cursor of the
        next."""
        return self.jobs_page(state, limit, cursor)[0]

    def jobs_page(self, state=None, limit=None, cursor=None):
        r = self.request("jobs", state=state, limit=limit, cursor=cursor)
        return r["jobs"], r.get("next")

    def fetch(self, job, index=0):
        """One image of a finished job: png (bytes), sha256 (checked), width, height, seed,
        params."""
        r = self.request("fetch", job=job, index=index)
        if hashlib.sha256(r["png"]).digest() != r["sha256"]:
            raise ProtocolError(f"sha256 of image {index} of job {job} does not match")
        return r

    def models(self):
        return self.request("models")["models"]

    def stats(self):
        return self.request("stats")

    def ping(self):
        self.request("ping")

    def events(self, job=None, timeout=None):
        """Yields events as they arrive; with job, only that job's, ending after its done,
        failed or canceled event (events of other jobs read meanwhile are dropped). timeout:
        seconds without an event before TimeoutError. Each event's seq numbers the session's
        events: a gap means some were missed."""
        while True:
            if self._events:
                ev = self._events.popleft()
            else:
                ev = self._recv(None if timeout is None else time.monotonic() + timeout)
                if "event" not in ev:
                    continue  # a reply to a request that gave up waiting
            if job is not None and ev["job"] != job:
                continue
            yield ev
            if job is not None and ev["event"] in TERMINAL_EVENTS:
                return
