"""The health check on the board: the agent classifies the release's probe; a failure switches back by itself.

Python 3.7 + stdlib only. Run right after a push made a release current (``op_health``), under the
app lock. The release carries everything the check needs (``health/health.json``: the probe image and
the host's own top-1 for it), so the board decides alone: the agent runs as a run does (the job built
from the release's ``app.json``, ``env.sh`` sourced, ``PYTHONPATH`` pinned to the release) on the probe,
with a timeout, in a scratch directory under the app that is removed afterwards.

On a failure the board switches ``current`` back to the release that was current before (one rename,
as any switch) and only then answers, and SIGHUP is ignored while it works, so a link lost after the
failure still leaves the previous release current. The failed release is removed (renamed out of the
way first, like pruning's debris), so ``deploy rollback`` can never land on it. With no earlier
release (a first push) ``current`` is removed: nothing is deployed, as before the push.

Every verdict is appended to ``health.log`` ("<time> <release> pass|fail"); a push of the release
that is already current skips the check when the log says it passed (``passed``).
"""

import json
import os
import shutil
import signal
import sys
import time

from . import protocol
from .files import Lock, read_text
from .layout import current_release, releases_dir
from .releases import list_releases, previous_current, prune, releases_in_use, switch_current
from .wire import Fail, check_id, safe_rel

SPEC = "health/health.json"
SCRATCH = ".health-"  # scratch directories under the app dir; any found under the lock is debris


def passed(base, rid):
    """Whether the last verdict ``health.log`` has for ``rid`` is a pass."""
    verdict = None
    for line in (read_text(os.path.join(base, "health.log")) or "").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == rid:
            verdict = parts[2]
    return verdict == "pass"


CHECKING = ".checking"  # "<release>\t<time>": made current by a push whose health check has not answered yet


def mark_checking(base, rid):
    """Say that ``rid`` was just made current and a health check follows (``service start`` will not pin it)."""
    with open(os.path.join(base, CHECKING), "w") as f:
        f.write(f"{rid}\t{time.time():.3f}\n")


def checking(base):
    """(release, since) made current by a push and not checked yet, or None."""
    try:
        rid, since = (read_text(os.path.join(base, CHECKING)) or "").split()
        return rid, float(since)
    except ValueError:
        return None


def clear_checking(base, rid):
    if (checking(base) or ("",))[0] == rid:
        os.unlink(os.path.join(base, CHECKING))


def record(base, rid, ok):
    with open(os.path.join(base, "health.log"), "a") as f:
        f.write("{:.3f} {} {}\n".format(time.time(), rid, "pass" if ok else "fail"))


def read_spec(release):
    """The release's ``health/health.json`` (probe path checked), or None when it has none."""
    text = read_text(os.path.join(release, SPEC))
    if text is None:
        return None
    try:
        spec = json.loads(text)
        if spec.get("kind") == "command":
            return spec
        safe_rel(spec["probe"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise Fail(f"{SPEC} of release {os.path.basename(release)} is malformed") from None
    return spec


def clean_scratch(base):
    for name in os.listdir(base):
        if name.startswith(SCRATCH):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def run_agent(base, probe, timeout):
    """Classify ``probe`` (a path in the current release) as a run would; returns
    (top-1 [index, label, score] or None, error line or None)."""
    from .runs import new_job

    scratch = os.path.join(base, f"{SCRATCH}{os.getpid()}")
    os.makedirs(scratch)
    try:
        req = protocol.RunRequest(run_id="health-check", mode="run",
                                  overrides={"inputs": [probe], "labelled": False, "topk": 2})
        job = new_job(base, scratch, req)  # from the release's app.json: what is deployed
        job["inputs"] = [os.path.join(job["release"], probe)]
        with open(os.path.join(scratch, "job.json"), "w") as f:
            json.dump(job, f)
        error = _agent(job["release"], scratch, timeout)
        got, agent_error = _verdict(scratch, job["release"])
        return got, agent_error or error
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _agent(release, scratch, timeout, args=None):
    """Run the agent to completion (its own session, killed as a group on timeout); an error line or None."""
    import subprocess

    from .runs import pinned_env

    args = args or ["-m", "agent", "run", "--job", os.path.join(scratch, "job.json")]
    with open(os.path.join(scratch, "agent.log"), "wb") as log:
        proc = subprocess.Popen(
            [sys.executable] + args,
            cwd=release, env=pinned_env(release, os.environ), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return f"the agent did not finish within {timeout:g}s"
    if code in (0, 2):
        return None
    tail = [ln for ln in (read_text(os.path.join(scratch, "agent.log")) or "").splitlines() if ln.strip()]
    last = tail[-1] if tail else ""
    return f"the agent exited with status {code}" + (f": {last}" if last and not last.startswith("{") else "")


def _verdict(scratch, release):
    """(top-1 of the probe or None, the agent's own error line or None) from its run directory."""
    text = read_text(os.path.join(scratch, "results.jsonl")) or ""
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("ok") and rec.get("topk"):
            return rec["topk"][0], None
        return None, "{}: {}".format(rec.get("kind", "error"), rec.get("message", ""))
    try:
        with open(os.path.join(scratch, "summary.json")) as f:
            error = json.load(f).get("error")
    except (OSError, ValueError, AttributeError):
        error = None
    return None, error and str(error).replace(release + "/", "")


def command_check(base, release, spec, timeout):
    """An own app's check: its health command (run as a run is, in a scratch tree, by ``agent.command``)
    must exit 0 and its output match ``expect``; without one, the release's interpreter must start and
    import the app's requirements. Returns (what was checked, error line or None)."""
    import subprocess

    from .runs import pinned_env

    if not spec.get("command"):
        code = "import " + ", ".join(spec.get("imports") or ["sys"])
        try:
            r = subprocess.run([sys.executable, "-c", code], cwd=release, env=pinned_env(release, os.environ),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            return code, f"`{code}` did not finish within {timeout:g}s"
        last = [ln for ln in r.stdout.decode("utf-8", "replace").splitlines() if ln.strip()]
        return code, None if r.returncode == 0 else (last[-1] if last else f"exit status {r.returncode}")
    scratch = os.path.join(base, f"{SCRATCH}{os.getpid()}")
    os.makedirs(scratch)
    try:
        with open(os.path.join(release, "app.json")) as f:
            app = json.load(f)
        job = {"v": 1, "kind": "command", "run_id": "health-check", "release": release, "out_dir": scratch,
               "command": spec["command"], "tree": app.get("tree", "app"), "workdir": app.get("workdir") or ".",
               "outputs": None, "images": os.path.join(release, app["images"]) if app.get("images") else None,
               "model": os.path.join(release, app["model"]) if app.get("model") else None}
        return spec["command"], _command_verdict(release, scratch, job, spec.get("expect"), timeout)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _command_verdict(release, scratch, job, expect, timeout):
    import re

    with open(os.path.join(scratch, "job.json"), "w") as f:
        json.dump(job, f)
    error = _agent(release, scratch, timeout, ["-m", "agent.command", "--job", os.path.join(scratch, "job.json")])
    try:
        with open(os.path.join(scratch, "summary.json")) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return error or "the health command left no summary"
    if summary.get("status") != "ok":
        return "the health command " + str(summary.get("reason") or "failed")
    if expect:
        out = "".join(read_text(os.path.join(scratch, n)) or "" for n in ("stdout.log", "stderr.log"))
        if not re.search(expect, out, re.M):
            last = [ln for ln in out.splitlines() if ln.strip()]
            return "the health command's output does not match {!r} (last line: {!r})".format(
                expect, last[-1][:200] if last else "")
    return None


def revert(base, rid):
    """Switch back to the release current before ``rid`` (or remove ``current``), then remove ``rid``."""

    back = previous_current(base, rid, list_releases(base))
    if back is not None:
        switch_current(base, back, "health")
    else:
        os.unlink(os.path.join(base, "current"))  # one unlink: a reader sees the release or none
    if rid not in releases_in_use(base):
        doomed = os.path.join(releases_dir(base), f".staging-failed-{rid}-{os.getpid()}")
        os.rename(os.path.join(releases_dir(base), rid), doomed)  # never half a release under its id
        shutil.rmtree(doomed, ignore_errors=True)
    return back


def matches(expected, got):
    """A pass: the agent classified the probe and, when the host gave a reference, agrees on the top-1 index."""
    return got is not None and (expected is None or int(got[0]) == int(expected[0]))


def check(base, rid, req):
    """Run the check on the current release ``rid``; the reply, after any switch back."""
    release = os.path.join(releases_dir(base), rid)
    spec = read_spec(release)
    if spec is None:
        return protocol.HealthReply(status="skipped", reason="the release ships no probe", release=rid, current=rid)
    t0 = time.monotonic()
    if spec.get("kind") == "command":
        what, error = command_check(base, release, spec, float(req.timeout))
        reply = protocol.HealthReply(release=rid, probe=what, source=what, agent_error=error,
                                     seconds=round(time.monotonic() - t0, 3))
        ok = error is None
    else:
        got, error = run_agent(base, spec["probe"], float(req.timeout))
        reply = protocol.HealthReply(release=rid, probe=spec["probe"], source=spec.get("source", ""),
                                     expected=spec.get("expected"), got=got, agent_error=error,
                                     seconds=round(time.monotonic() - t0, 3))
        ok = matches(reply.expected, got)
    record(base, rid, ok)
    if ok:

        reply.status, reply.current = "passed", rid
        reply.pruned = prune(base, int(req.keep))
    else:
        reply.status, reply.current = "failed", revert(base, rid)
    return reply


def op_health(wire, req):
    base = wire.app_dir(req.app)
    rid = check_id(req.release, "release id")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a dropped link must not stop a switch back half-way
    with Lock(base, "health check"):
        clean_scratch(base)
        cur = current_release(base)
        if cur != rid:
            clear_checking(base, rid)
            raise Fail(f"current is {cur or 'none'}, not {rid}: another push or rollback came between; "
                       "nothing was checked or switched")
        try:
            reply = check(base, rid, req)
        finally:
            clear_checking(base, rid)
    wire.reply(reply)
