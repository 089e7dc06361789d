"""Agent runs on the board: start detached, follow events, attach, stop, pull, status.

Python 3.7 + stdlib only. A run is started with ``start_new_session`` so it survives the SSH
session that started it; its events are appended to ``runs/<id>/events.jsonl`` by the agent,
and following a run is copying that file to the channel as it grows.
"""

import json
import os
import signal
import sys
import time

from . import protocol
from .files import pid_alive, read_text, write_atomic
from .layout import read_pid, runs_dir
from .watch import settle
from .wire import Fail, check_run_id, safe_rel


def extract_inputs(inp, dest):
    """Unpack an uploaded image folder: regular files and directories only, nothing outside ``dest``."""
    import shutil
    import tarfile

    os.makedirs(dest, exist_ok=True)
    count = 0
    with tarfile.open(fileobj=inp, mode="r|") as tf:
        for member in tf:
            out = os.path.join(dest, safe_rel(member.name))
            if member.isdir():
                os.makedirs(out, exist_ok=True)
                continue
            if not member.isfile():
                raise Fail(f"refusing non-regular file in upload: {member.name!r}")
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "wb") as f:
                shutil.copyfileobj(tf.extractfile(member), f, 1 << 20)
            count += 1
    return count


def pinned_env(release, environ):
    """The agent's environment: PYTHONPATH entries through ``current`` pinned to this release, and no bytecode
    written as it imports (CPython's writer leaves torn .pyc files on a full disk)."""
    env = dict(environ)
    link = os.path.join(os.path.dirname(os.path.dirname(release)), "current")
    parts = [p.replace(link, release, 1) if p.startswith(link) else p for p in env.get("PYTHONPATH", "").split(":") if p]
    for p in (os.path.join(release, "site"), release):
        if p not in parts:
            parts.insert(0, p)
    env["PYTHONPATH"] = ":".join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # the release's bytecode was written at push (bytecode.py), checked
    return env


def new_job(base, run_dir, req):
    """The job for a new run, from the deployed release's app.json (what is deployed, not today's inventory)."""
    cur = os.path.join(base, "current")
    if not os.path.isdir(cur):
        raise Fail("nothing deployed for this app yet: run `deploy push` first")
    release = os.path.realpath(cur)
    with open(os.path.join(release, "app.json")) as f:
        app = json.load(f)
    check_python(app, release)
    if app.get("kind") == "command":
        return command_job(app, release, run_dir, req)
    job = {
        "v": 1,
        "mode": req.mode,
        "model": app["model"],
        "backend": app["backend"],
        "preprocess": app.get("preprocess") or {"preset": "imagenet"},
        "labels": app.get("labels"),
        "inputs": [app["images"]] if app.get("images") else [],
        "batch": app.get("batch", 1),
        "topk": app.get("topk", 5),
        "labelled": True,
    }
    if app.get("backend_options"):
        job["backend_options"] = app["backend_options"]
    job.update(req.overrides or {})
    if req.upload:
        job["inputs"] = [os.path.join(run_dir, "inputs")]
    if not job["inputs"] and job["mode"] != "bench":
        raise Fail("the app has no images and none were given (use --images DIR)")
    job.update({"run_id": req.run_id, "release": release, "out_dir": run_dir})
    return job


def check_python(app, release):
    """The interpreter is part of the release: it was built (its site/ wheels) for the Python its app.json names,
    and this interpreter was found by the release's own env.sh; a different one is refused in one line."""
    want, have = app.get("python"), "{}.{}".format(*sys.version_info[:2])
    if want and want != have:
        rid = os.path.basename(release)
        raise Fail(f"release {rid} was built for Python {want}, but the board's interpreter is {sys.executable} "
                   f"(Python {have}); fix app.env or the board's python:, and push again")


def command_job(app, release, run_dir, req):
    """The job of an own app's run (``agent/command.py``): its command, tree, workdir and outputs, and the
    board paths of ``{images}`` (an upload, else the release's images) and ``{model}``."""
    if req.mode != "run":
        raise Fail(f"--mode {req.mode} is the built-in classifier's; this app runs its own command")
    images = os.path.join(run_dir, "inputs") if req.upload else (
        os.path.join(release, app["images"]) if app.get("images") else None)
    return {
        "v": 1, "kind": "command", "mode": "command", "run_id": req.run_id, "release": release, "out_dir": run_dir,
        "command": app["command"], "tree": app.get("tree", "app"), "workdir": app.get("workdir") or ".",
        "outputs": app.get("outputs"), "images": images,
        "model": os.path.join(release, app["model"]) if app.get("model") else None,
    }


def agent_argv(job, job_path):
    """How the agent is started for ``job``: the classifier's mode, or the own app's supervisor."""
    if job.get("kind") == "command":
        return [sys.executable, "-m", "agent.command", "--job", job_path]
    return [sys.executable, "-m", "agent", job.get("mode", "run"), "--job", job_path]


def resumed_job(job_path, run_id):
    with open(job_path) as f:
        job = json.load(f)
    if not os.path.isdir(job["release"]):
        raise Fail("release {} of run {} no longer exists".format(os.path.basename(job["release"]), run_id))
    return job


def prepare_run(wire, base, req):
    """Check the run can start, unpack an upload, and write job.json; returns (run_dir, job).

    A new run is assembled under ``runs/.new-<id>-<pid>`` (its images, its job) and renamed into place whole:
    an upload cut off or refused by a full disk leaves no run that looks like one (the directory is removed
    at once, or by the next run op when this process was killed)."""
    run_id = check_run_id(req.run_id)
    run_dir = os.path.join(runs_dir(base), run_id)
    clean_debris(base)
    if req.resume:
        return _prepare_resume(wire, base, req, run_dir)
    if os.path.lexists(run_dir):
        raise Fail(f"run {run_id} already exists on the board")
    new = os.path.join(runs_dir(base), f".new-{run_id}-{os.getpid()}")
    os.makedirs(new)
    try:
        if req.upload:
            receive_upload(wire.stdin, os.path.join(new, "inputs"))
        job = new_job(base, run_dir, req)
        write_atomic(os.path.join(new, "job.json"), json.dumps(job, indent=2).encode())
        os.rename(new, run_dir)
    except BaseException:
        import shutil

        shutil.rmtree(new, ignore_errors=True)
        raise
    return run_dir, job


def _prepare_resume(wire, base, req, run_dir):
    import shutil

    if not os.path.isdir(run_dir):
        raise Fail(f"no run {req.run_id} on the board to resume")
    pid = read_pid(run_dir)
    if pid and pid_alive(pid):
        raise Fail(f"run {req.run_id} is still running (pid {pid}); use --attach")
    for name in os.listdir(run_dir):
        if name.startswith(".inputs-"):  # an upload of an earlier resume, cut off
            shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
    if req.upload:
        tmp = os.path.join(run_dir, f".inputs-{os.getpid()}")
        try:
            receive_upload(wire.stdin, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(os.path.join(run_dir, "inputs"), ignore_errors=True)
        os.rename(tmp, os.path.join(run_dir, "inputs"))
    job_path = os.path.join(run_dir, "job.json")
    if os.path.isfile(job_path):
        return run_dir, resumed_job(job_path, req.run_id)
    job = new_job(base, run_dir, req)
    write_atomic(job_path, json.dumps(job, indent=2).encode())
    return run_dir, job


def receive_upload(inp, dest):
    """``extract_inputs``, a full disk said in one line."""
    import errno

    try:
        return extract_inputs(inp, dest)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise Fail(f"{exc.strerror} on the board while the images arrived ({os.path.dirname(dest)}); the run "
                   "was not started and nothing of the upload is kept") from None


def clean_debris(base):
    """Remove new runs whose op is gone before they were whole (``runs/.new-<id>-<pid>``)."""
    import shutil

    try:
        names = os.listdir(runs_dir(base))
    except OSError:
        return
    for name in names:
        pid = name.rpartition("-")[2]
        if name.startswith(".new-") and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(os.path.join(runs_dir(base), name), ignore_errors=True)


def op_run(wire, req):
    import subprocess

    base = wire.app_dir(req.app)
    run_dir, job = prepare_run(wire, base, req)
    events = os.path.join(run_dir, "events.jsonl")
    offset = os.path.getsize(events) if os.path.exists(events) else 0  # a resumed run: only new events
    release = job["release"]
    for name in ("launcher.pid", "watcher.pid"):  # a resumed run's, from before
        if os.path.exists(os.path.join(run_dir, name)):
            os.unlink(os.path.join(run_dir, name))
    watcher = [sys.executable, "-I", "-B", os.path.join(os.path.dirname(os.path.abspath(__file__)), "watch.py"),
               run_dir, "--"]
    with open(os.path.join(run_dir, "agent.log"), "ab") as log:
        proc = subprocess.Popen(
            watcher + agent_argv(job, os.path.join(run_dir, "job.json")),
            cwd=release, env=pinned_env(release, os.environ), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,  # the run survives the SSH session that started it
        )
    pid = _agent_pid(run_dir, proc)
    wire.reply(protocol.RunStarted(run_id=req.run_id, pid=pid, release=os.path.basename(release)))
    if req.follow:
        follow(wire, run_dir, pid, proc, offset)


def _agent_pid(run_dir, watcher, timeout=30.0):
    """The agent's pid, once its watcher (``watch.py``) has started it and said so in launcher.pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and watcher.poll() is None:
        pid = read_pid(run_dir)
        if pid:
            return pid
        time.sleep(0.005)
    return read_pid(run_dir) or watcher.pid


class _Tail:
    """Reads the complete lines appended to a file since the last read."""

    def __init__(self, path, offset):
        self.path = path
        self.pos = offset
        self.partial = b""

    def lines(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except OSError:
            return []
        self.pos += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        return [ln for ln in lines if ln.strip()]


def follow(wire, run_dir, pid, proc, offset):
    """Copy events.jsonl to the channel as it grows, until an end event or the agent is gone."""
    tail = _Tail(os.path.join(run_dir, "events.jsonl"), offset)
    ended = False
    grace_until = None
    while not ended:
        lines = tail.lines()
        for line in lines:
            wire.stdout.write(line + b"\n")
            ended = ended or b'"event":"end"' in line or b'"event": "end"' in line
        wire.stdout.flush()
        if ended:
            break
        alive = proc.poll() is None if proc is not None else (
            pid_alive(pid) or pid_alive(read_pid(run_dir, "watcher.pid") or pid))
        if not alive:
            if grace_until is None:
                grace_until = time.time() + 1.0  # let the last writes land
            elif time.time() > grace_until:
                if settle(run_dir):  # gone without an end, and no watcher to say why: ended here
                    grace_until = time.time()
                    continue
                break
        time.sleep(0.05 if lines else 0.1)
    code = proc.wait() if proc is not None else None
    wire.reply(protocol.FollowEnd(ended=ended, code=code, offset=tail.pos))


def op_attach(wire, req):
    run_id = check_run_id(req.run_id)
    run_dir = os.path.join(runs_dir(wire.app_dir(req.app)), run_id)
    if not os.path.isdir(run_dir):
        raise Fail(f"no run {run_id} on the board")
    settle(run_dir)  # an agent and watcher gone without an end: the run ends now, with the reason
    pid = read_pid(run_dir) or 0
    wire.reply(protocol.Attached(run_id=run_id, pid=pid, running=bool(pid and pid_alive(pid))))
    follow(wire, run_dir, pid, None, int(req.offset))


def op_stop(wire, req):
    run_dir = os.path.join(runs_dir(wire.app_dir(req.app)), check_run_id(req.run_id))
    pid = read_pid(run_dir)
    stopped = False
    if pid and pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        stopped = True
    wire.reply(protocol.StopReply(ok=True, stopped=stopped, pid=pid))


def run_info(run_dir):
    settle(run_dir)
    status = (read_text(os.path.join(run_dir, "status")) or "").strip() or None
    pid = read_pid(run_dir)
    if pid and pid_alive(pid):
        status = "running"
    summary = None
    text = read_text(os.path.join(run_dir, "summary.json"))
    if text:
        try:
            summary = json.loads(text)
        except ValueError:
            pass
    return protocol.RunInfo(id=os.path.basename(run_dir), status=status, summary=summary,
                            mtime=os.path.getmtime(run_dir))


