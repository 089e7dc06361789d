"""``python3 -m agent.command --job job.json``: the user's own app as a run, supervised.

The board starts this detached (``deploy/board/runs.py``) for an app with ``app.command``. It

* gives the run its own working tree, ``runs/<id>/tree/``: the release's ``app/`` folders made afresh
  and its files hard-linked (no content copied: a 2,000-file tree costs folders and links, not bytes).
  The app writes next to its code (``../out``) into the run's tree, never into the release, and two runs
  at once never see each other's outputs. Release files are read-only, so opening one for writing fails
  instead of changing the release under every later run;
* runs the command there (``{images}`` and ``{model}`` filled in, shell-quoted; ``python3``/``python``
  as the first word becomes this interpreter: on an Atlas 200 DK the CANN 3.7, not Ubuntu's 3.6), in
  its own process group, with the release's ``site/`` on ``PYTHONPATH``;
* copies its stdout and stderr into ``stdout.log`` / ``stderr.log`` and, line by line, into
  ``events.jsonl`` as ``log`` events (``[n/N]`` counters also become ``progress`` events), which the host
  follows live;
* stops it on ``deploy stop`` (SIGTERM to the group, SIGKILL 5 s later) or when the board's disk runs
  low, keeping what it wrote;
* ends the run with its exit status, the reason when it did not exit 0, and what it wrote
  (``summary.json``, ``status``, the ``end`` event).

Exit status: 0 when the command exited 0, else 1. Python 3.7 + stdlib only.
"""

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

from .rundir import RunDir

PROGRESS_RE = re.compile(r"\[\s*(\d+)\s*/\s*(\d+)\s*\]")
LINE_MAX = 4096  # a longer line is cut in its log event (the log file keeps it whole)
LOG_MAX = 64 << 20  # per stream; past it the log file says so and keeps the events only
RESERVE = 256 << 20  # free disk a run leaves the board (at most 5% of a small filesystem)
POLL_S = 0.5
KILL_AFTER_S = 5.0


class CommandError(Exception):
    """The command cannot be started as written (a placeholder with nothing behind it)."""


def link_tree(src, dst):
    """``dst`` as a tree of hard links to ``src``'s files (folders made afresh); returns the file count."""
    count = 0
    for dirpath, _dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        here = dst if rel == "." else os.path.join(dst, rel)
        os.makedirs(here, exist_ok=True)
        for name in filenames:
            os.link(os.path.join(dirpath, name), os.path.join(here, name))
            count += 1
    return count


def expand(command, values, python=sys.executable):
    """The argv of ``command`` with ``{images}``/``{model}`` filled in (each one word) and ``python3`` as the
    first word made this interpreter. CommandError when a placeholder used has no value."""
    import string

    used = [f for _, f, _, _ in string.Formatter().parse(command) if f]
    missing = [f for f in used if not values.get(f)]
    if missing:
        why = {"images": "the run has no images: give --images DIR, or set app.images",
               "model": "the release has no model for this board: set app.models"}
        raise CommandError("the command takes {{{}}} but {}".format(missing[0], why.get(missing[0], "it is unset")))
    argv = shlex.split(command.format(**{k: shlex.quote(str(v)) for k, v in values.items() if v}))
    if argv and argv[0] in ("python3", "python"):
        argv[0] = python
    return argv


class Supervisor:
    """One run of the command: its tree, its output pumps, the disk watch, and the stop."""

    def __init__(self, job, run):
        self.job = job
        self.run = run
        self.proc = None
        self.stop_reason = None
        self.stderr_tail = ""
        self.lock = threading.Lock()

    # --- the working tree ------------------------------------------------------------
    def make_tree(self):
        release = self.job["release"]
        tree = self.run.path("tree")
        t0 = time.perf_counter()
        if not os.path.isdir(tree):
            link_tree(os.path.join(release, self.job.get("tree", "app")), tree)
        return tree, time.perf_counter() - t0

    def workdir(self, tree):
        return os.path.normpath(os.path.join(tree, self.job.get("workdir") or "."))

    def outputs_dir(self, tree):
        out = self.job.get("outputs")
        return os.path.normpath(os.path.join(self.workdir(tree), out)) if out else None

    # --- the child -------------------------------------------------------------------
    def start(self, argv, cwd):
        env = dict(os.environ)
        env.update({"HIAI_RUN_ID": self.job["run_id"], "HIAI_RUN_DIR": self.run.out_dir, "PYTHONUNBUFFERED": "1"})
        try:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True)
        except FileNotFoundError:
            return 127, f"command not found on the board: {argv[0]}"
        except PermissionError:
            return 126, f"command not executable on the board: {argv[0]}"
        return None, None

    def stop(self, reason):
        """End the command: SIGTERM to its group, SIGKILL after a grace period."""
        with self.lock:
            if self.stop_reason is None:
                self.stop_reason = reason
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        _killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_AFTER_S
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            _killpg(proc.pid, signal.SIGKILL)

    # --- its output --------------------------------------------------------------------
    def pump(self, pipe, stream):
        """Copy one stream into its log file and, line by line, into log (and progress) events."""
        written = 0
        with open(self.run.path(stream + ".log"), "ab") as log:
            for raw in iter(pipe.readline, b""):
                if written < LOG_MAX:
                    log.write(raw)
                    log.flush()
                    written += len(raw)
                    if written >= LOG_MAX:
                        log.write(b"\n[deploy: log cut at %d bytes; the events keep every line]\n" % LOG_MAX)
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if stream == "stderr" and line.strip():
                    self.stderr_tail = line[:LINE_MAX]
                self.run.emit("log", message=line[:LINE_MAX], stream=stream)
                m = PROGRESS_RE.search(line)
                if m and int(m.group(2)) > 0:
                    self.run.emit("progress", done=int(m.group(1)), total=int(m.group(2)))
        pipe.close()

    def watch_disk(self):
        """Stop the command when the board's free space falls to the reserve."""
        while self.proc is not None and self.proc.poll() is None:
            free, reserve = disk_state(self.run.out_dir)
            if free < reserve:
                self.stop(f"disk budget: the board's disk is down to {free >> 20} MB free (a run keeps {reserve >> 20} MB); the app was "
                          "stopped and what it wrote is kept")
                return
            time.sleep(POLL_S)


def disk_state(path):
    """(bytes free for the board user, the reserve a run leaves) on ``path``'s filesystem."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 1 << 62, 0
    return st.f_bavail * st.f_frsize, min(RESERVE, st.f_blocks * st.f_frsize // 20)


def _killpg(pid, sig):
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def tree_bytes(path):
    """Bytes in regular files under ``path`` (links not followed); 0 when it is missing."""
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                try:
                    total += os.path.getsize(p)
                except OSError:
                    pass
    return total


def signal_name(code):
    if code is not None and code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return None


def execute(job):
    """Run the job's command to its end; returns the process exit status (0 ok, 1 failed)."""
    run = RunDir(job["out_dir"], echo=False).open()
    run.set_status("running")
    sup = Supervisor(job, run)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, f: threading.Thread(target=sup.stop, args=("stopped by deploy stop",)).start())
    t0 = time.time()
    code, reason, tree_s = None, None, 0.0
    try:
        tree, tree_s = sup.make_tree()
        argv = expand(job["command"], {"images": job.get("images"), "model": job.get("model")})
        run.emit("start", run_id=job["run_id"], mode="command", total=0, command=argv, release=job["release"],
                 run_tree_s=round(tree_s, 4))
        code, reason = sup.start(argv, sup.workdir(tree))
    except (CommandError, OSError) as exc:
        code, reason = 1, str(exc)
        run.emit("log", message=reason, stream="stderr")
    if sup.proc is not None:
        code, reason = _wait(sup)
    return _finish(job, run, sup, code, reason, t0, tree_s)


def _wait(sup):
    pumps = [threading.Thread(target=sup.pump, args=(p, n), daemon=True)
             for p, n in ((sup.proc.stdout, "stdout"), (sup.proc.stderr, "stderr"))]
    for t in pumps:
        t.start()
    threading.Thread(target=sup.watch_disk, daemon=True).start()
    code = sup.proc.wait()
    for t in pumps:
        t.join(10)
    if sup.stop_reason:
        return code, sup.stop_reason
    if code == 0:
        return 0, None
    name = signal_name(code)
    last = sup.stderr_tail
    why = (f"killed by {name}" if name else f"exited with status {code}") + (": " + last if last else "")
    free, reserve = disk_state(sup.run.out_dir)
    if free < reserve:  # it filled the disk between two looks of watch_disk, and failed on it
        why = f"disk full on the board ({free >> 20} MB free; what the app wrote is kept): {why}"
    return code, why


def _finish(job, run, sup, code, reason, t0, tree_s):
    tree = run.path("tree")
    outputs = sup.outputs_dir(tree)
    status = "ok" if code == 0 and not sup.stop_reason else "failed"
    summary = {"status": status, "exit_status": code, "signal": signal_name(code), "reason": reason,
               "elapsed_s": round(time.time() - t0, 3), "run_tree_s": round(tree_s, 4),
               "outputs": os.path.relpath(outputs, tree) if outputs else None,
               "output_bytes": tree_bytes(outputs) if outputs else 0, "stderr_tail": sup.stderr_tail,
               "ok": 0, "failed": 0, "total": 0}
    try:
        run.write_json("summary.json", summary)
        run.emit("end", summary=summary)
    finally:
        run.set_status(status)
        run.close()
    return 0 if status == "ok" else 1


def main(argv=None):
    p = argparse.ArgumentParser(prog="python3 -m agent.command", description=__doc__.split("\n")[0])
    p.add_argument("--job", required=True, help="job.json written by the board for this run")
    args = p.parse_args(argv)
    with open(args.job) as f:
        job = json.load(f)
    return execute(job)


if __name__ == "__main__":
    sys.exit(main())
