"""A run's watcher: starts its agent, waits for it, and ends the run with a reason when the agent could not.

Python 3.7 + stdlib only, and usable as a script (``python -I -B watch.py RUN_DIR -- AGENT ARGV...``):
``runs.op_run`` starts it detached (a session of its own, so it outlives the SSH session as the agent does).
It writes ``watcher.pid`` and ``launcher.pid`` (the agent's pid, which ``deploy stop`` signals). When the
agent exits without having ended its run (killed by a signal, out of memory, a backend crash, a disk too
full for its last words), the watcher ends it: ``summary.json`` with the reason (``killed by SIGKILL``,
``exited with status 1: MemoryError``, ``disk full on the board``), the ``end`` event, ``status`` failed.
Its own exit status is the agent's documented one (0 ok, 2 partial, 1 anything else).

:func:`settle` does the same for a run whose agent and watcher are both gone (a reboot, a ``kill`` of
both): the next command that looks at the run (status, attach, pull, resume) ends it.
"""

import errno
import json
import os
import signal
import subprocess
import sys

FINAL = ("ok", "partial", "failed")
RESERVE = ".reserve"  # the agent's spare blocks (agent/rundir.py): freed first, so a full disk takes the end


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def alive(pid):
    """True while ``pid`` runs (a zombie has ended)."""
    try:
        os.kill(pid, 0)
    except OSError as exc:
        if exc.errno != errno.EPERM:
            return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def status(run_dir):
    try:
        with open(os.path.join(run_dir, "status")) as f:
            return f.read().strip()
    except OSError:
        return ""


def _last_start(run_dir):
    """The run's last start event (a resumed run appends another), or {}."""
    start = {}
    try:
        with open(os.path.join(run_dir, "events.jsonl"), "rb") as f:
            for raw in f:
                if b'"event":"start"' in raw:
                    try:
                        start = json.loads(raw.decode("utf-8"))
                    except ValueError:
                        pass
    except OSError:
        pass
    return start if isinstance(start, dict) else {}


def _counts(run_dir):
    """(ok, failed) over results.jsonl: what the run keeps, whatever killed it."""
    ok = failed = 0
    try:
        with open(os.path.join(run_dir, "results.jsonl"), "rb") as f:
            for raw in f:
                try:
                    rec = json.loads(raw.decode("utf-8"))
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    ok, failed = (ok + 1, failed) if rec.get("ok") else (ok, failed + 1)
    except OSError:
        pass
    return ok, failed


def finalize(run_dir, reason, code=None):
    """End a run its agent left without an end: summary.json, the end event, then status (last)."""
    try:
        os.unlink(os.path.join(run_dir, RESERVE))
    except OSError:
        pass
    start = _last_start(run_dir)
    ok, failed = _counts(run_dir)
    summary = {"ok": ok, "failed": failed, "total": start.get("total", 0) + start.get("skipped", 0),
               "status": "failed", "reason": reason, "error": reason, "agent_exit": code, "interrupted": True,
               "ended_by": "watcher"}
    if start.get("mode") == "command":
        summary.update({"exit_status": code, "signal": _signal(code), "elapsed_s": None})
    _write(os.path.join(run_dir, "summary.json"), json.dumps(summary, indent=2) + "\n")
    line = json.dumps({"v": 1, "event": "end", "summary": summary}, separators=(",", ":")) + "\n"
    with open(os.path.join(run_dir, "events.jsonl"), "a") as f:
        f.write(line)
    _write(os.path.join(run_dir, "status"), "failed\n")
    try:
        os.unlink(os.path.join(run_dir, "pid"))
    except OSError:
        pass
    return summary


def _write(path, text):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _signal(code):
    if code is None or code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def reason_for(run_dir, code):
    """Why the agent ended without a word, from its exit status and the last line of its log."""
    tail = ""
    try:
        with open(os.path.join(run_dir, "agent.log"), "rb") as f:
            f.seek(max(0, os.path.getsize(f.name) - 4096))
            lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        tail = next((ln for ln in reversed(lines) if not ln.startswith("{")), "")[:300]
    except OSError:
        pass
    if "No space left on device" in tail or "Disk quota exceeded" in tail:
        return f"disk full on the board ({tail.strip()})"
    if code is not None and code < 0:
        return f"killed by {_signal(code)}"
    why = f"the agent exited with status {code}" if code else "the agent exited without ending the run"
    return why + (f": {tail.strip()}" if tail else "")


def settle(run_dir):
    """End a run whose agent and watcher are both gone without an end; True when it did."""
    if status(run_dir) in FINAL or not os.path.isfile(os.path.join(run_dir, "job.json")):
        return False
    for name in ("launcher.pid", "pid", "watcher.pid"):
        pid = read_pid(os.path.join(run_dir, name))
        if pid and alive(pid):
            return False
    try:
        finalize(run_dir, "the agent is gone and did not end its run (the board rebooted, or the agent and its "
                          "watcher were killed)")
    except OSError:
        return False
    return True


def watch(run_dir, argv):
    """Run the agent ``argv`` to its end; returns this process's exit status."""
    _write(os.path.join(run_dir, "watcher.pid"), f"{os.getpid()}\n")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    except OSError as exc:
        finalize(run_dir, f"the agent could not be started: {exc}", 127)
        return 1
    _write(os.path.join(run_dir, "launcher.pid"), f"{proc.pid}\n")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stop is the agent's to obey; the watcher sees it out
    code = proc.wait()
    try:
        if status(run_dir) not in FINAL:
            finalize(run_dir, reason_for(run_dir, code), code)
        os.unlink(os.path.join(run_dir, "watcher.pid"))
    except OSError:  # nothing could be written: the next command that looks at the run ends it
        return 1
    return code if code in (0, 2) else 1


if __name__ == "__main__":
    sep = sys.argv.index("--")
    sys.exit(watch(sys.argv[1], sys.argv[sep + 1:]))
