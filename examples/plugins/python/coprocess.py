#!/usr/bin/env python3
"""An example ah-worker `coprocess` plugin in Python (standard library only).

ah-worker starts this script once and keeps it running. It sends us one JSON
object per line on stdin and reads one JSON object per line from our stdout:

    worker -> us:  {"type":"job", ...}    run a job
                   {"type":"reply", ...}  the answer to one of our `call`s
    us -> worker:  {"type":"result", ...} a job is done (ok or failed)
                   {"type":"call", ...}   ask the worker to do something
                   {"type":"log", ...}    a log line for the worker's log

Several jobs can be in flight at once, so every job runs in its own thread
and results go back in whatever order the jobs finish. See
docs/plugin-protocol.md for the whole protocol.

Classes handled here (declared as "Py::*" in plugin.toml):

    Py::Echo     succeeds, and logs its args
    Py::Noop     succeeds at once and logs nothing (scripts/bench uses it)
    Py::Fail     fails with ArgumentError; the error is args[0]
    Py::Sleep    sleeps args[0] seconds (without holding up other jobs)
    Py::Enqueue  enqueues job args[0] on queue args[1] with args args[2]
                 (and a delay of args[3] seconds, if given)
    Py::Publish  publishes args[1] on the Faye channel args[0] (the worker
                 needs a [faye] section)
    Py::Say      says args[1] in the actionHero chat room args[0] (the
                 worker's [faye] section needs server_token)
    Py::Crash    the whole process exits with status 3, answering nothing

Try it by hand:

    printf '%s\n' '{"type":"job","id":"1","class":"Py::Echo","queue":"q","args":[1]}' \
        | python3 examples/plugins/python/coprocess.py
"""

import itertools
import json
import os
import sys
import threading
import time
import traceback

# --------------------------------------------------------------------------
# Talking to the worker
# --------------------------------------------------------------------------

# Job threads write concurrently. Each message must reach the worker as one
# whole line, so a lock covers writing the line *and* flushing it.
_stdout_lock = threading.Lock()


def send(message):
    """Write one message to the worker as a single line of compact JSON."""
    line = json.dumps(message, separators=(",", ":")) + "\n"
    with _stdout_lock:
        try:
            sys.stdout.write(line)
            sys.stdout.flush()
        except BrokenPipeError:
            # The worker has gone away; nobody is left to talk to.
            os._exit(0)


def log(message, job_id=None, level="info"):
    """Ask the worker to log a line (levels: error, warn, info, debug)."""
    msg = {"type": "log", "level": level, "message": message}
    if job_id is not None:
        msg["job"] = job_id
    send(msg)


class Calls:
    """Outstanding `call`s to the worker, waiting for their `reply`.

    A job thread sends a call and blocks; the main thread, which reads stdin,
    hands it the reply with the same id.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting = {}  # call id -> [threading.Event, reply or None]
        self._closed = False  # stdin is closed: no reply can come anymore

    def call(self, method, params, job_id=None):
        """Send a call and wait for its reply (the reply object is returned)."""
        with self._lock:
            if self._closed:
                return {"ok": False, "error": "stdin closed: no reply possible"}
            call_id = "py-%d" % next(self._ids)
            slot = [threading.Event(), None]
            self._waiting[call_id] = slot
        message = {"type": "call", "id": call_id}
        if job_id is not None:
            message["job"] = job_id  # optional; tells the worker's logs which job asked
        message.update(method=method, params=params)
        send(message)
        slot[0].wait()
        return slot[1]

    def reply(self, message):
        """Hand a `reply` from the worker to the thread waiting for it."""
        with self._lock:
            slot = self._waiting.pop(message.get("id"), None)
        if slot is None:
            return  # not ours (or already answered): ignore it
        slot[1] = message
        slot[0].set()

    def close(self):
        """stdin reached EOF: wake everybody still waiting, with an error."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = self._waiting, {}
        for slot in waiting.values():
            slot[1] = {"ok": False, "error": "stdin closed before the reply"}
            slot[0].set()


calls = Calls()

# --------------------------------------------------------------------------
# The handlers
# --------------------------------------------------------------------------
#
# A handler gets the job object and returns to succeed, or raises to fail.
# The exception's class name becomes the job's `exception` in the Resque
# failure (RuntimeError and NameError are Python built-ins and mean what the
# Ruby ones do; ArgumentError is defined just below).


class ArgumentError(Exception):
    """Bad arguments, named like Ruby's ArgumentError."""


def echo(job):
    log("args: %s" % json.dumps(job.get("args"), separators=(",", ":")), job["id"])


def noop(job):
    pass


def fail(job):
    args = job.get("args") or ["Py::Fail was asked to fail"]
    raise ArgumentError(str(args[0]))


def sleep(job):
    args = job.get("args") or []
    if not args or not isinstance(args[0], (int, float)) or args[0] < 0:
        raise ArgumentError("args[0] must be a number of seconds")
    # This blocks only this job's thread; other jobs carry on meanwhile.
    time.sleep(args[0])


def enqueue(job):
    args = job.get("args") or []
    if len(args) < 3:
        raise ArgumentError("expected [class, queue, args] or [class, queue, args, in]")
    params = {"class": args[0], "queue": args[1], "args": args[2]}
    if len(args) > 3:
        params["in"] = args[3]  # seconds, or a duration such as "90s"
    call_or_fail("enqueue", params, job)


def publish(job):
    args = job.get("args") or []
    if len(args) < 2:
        raise ArgumentError("expected [channel, data]")
    call_or_fail("faye.publish", {"channel": args[0], "data": args[1]}, job)


def say(job):
    args = job.get("args") or []
    if len(args) < 2:
        raise ArgumentError("expected [room, message]")
    call_or_fail("faye.say", {"room": args[0], "message": args[1]}, job)


def call_or_fail(method, params, job):
    """Call the worker for `job`; a refusal fails the job with its error."""
    reply = calls.call(method, params, job["id"])
    if not reply.get("ok"):
        raise RuntimeError(reply.get("error") or method + " failed")
    return reply.get("result")


def crash(job):
    # os._exit ends the process at once: no result, no cleanup. The worker
    # fails this process's jobs in flight and starts a new process.
    os._exit(3)


HANDLERS = {
    "Py::Echo": echo,
    "Py::Noop": noop,
    "Py::Fail": fail,
    "Py::Sleep": sleep,
    "Py::Enqueue": enqueue,
    "Py::Publish": publish,
    "Py::Say": say,
    "Py::Crash": crash,
}


def run_job(job):
    """Run one job (in its own thread) and send its result."""
    job_id = job["id"]
    try:
        handler = HANDLERS.get(job.get("class"))
        if handler is None:
            raise NameError("unknown class %s" % job.get("class"))
        handler(job)
    except Exception as exc:
        # The last two frames (this function and the handler) make a
        # readable Ruby-style backtrace for the failure.
        frames = traceback.extract_tb(exc.__traceback__)[-2:]
        send({
            "type": "result",
            "id": job_id,
            "ok": False,
            "exception": type(exc).__name__,
            "error": str(exc),
            "backtrace": [
                "%s:%d:in `%s'" % (os.path.basename(f.filename), f.lineno, f.name)
                for f in frames
            ],
        })
    else:
        send({"type": "result", "id": job_id, "ok": True})


# --------------------------------------------------------------------------
# The main loop: read stdin line by line
# --------------------------------------------------------------------------


def main():
    # JSON is UTF-8 whatever the locale says.
    sys.stdin.reconfigure(encoding="utf-8")
    sys.stdout.reconfigure(encoding="utf-8")

    jobs = []
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            message = json.loads(line)
        except ValueError:
            # stderr is logged by the worker line by line.
            print("not JSON, ignored: %r" % line[:200], file=sys.stderr, flush=True)
            continue
        if not isinstance(message, dict):
            continue

        kind = message.get("type")
        if kind == "job" and "id" in message:
            thread = threading.Thread(target=run_job, args=(message,))
            thread.start()
            jobs = [t for t in jobs if t.is_alive()] + [thread]
        elif kind == "reply":
            calls.reply(message)
        # Any other type is ignored, so newer workers can add messages.

    # EOF: the worker is shutting down. Let the jobs in flight finish (their
    # results are still read), then exit 0.
    calls.close()
    for thread in jobs:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
