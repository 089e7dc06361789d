"""The service's supervisor: keeps ``python -m agent service`` running, restarts it with back-off.

Python 3.7 + stdlib only, and self-contained (no imports from this package): ``deploy service start``
copies this file to ``~/HIAI_PROJECTS/<app>/service/supervisor.py``, so what the crontab's
``@reboot`` line (or the systemd user unit) starts does not depend on the board-code cache::

    python3 .../service/supervisor.py .../service

One supervisor per service (``supervisor.lock``, flock): a second one exits at once. It starts the
agent in the release named by ``service/release`` (``current`` when that one is gone), with the
release's own ``env.sh`` sourced and ``PYTHONPATH`` pinned to that release, stdout/stderr to ``agent.log``.

Restarts: exit 3 (the pinned release changed) and exit 0 without a stop request (the agent was asked
to end, e.g. for a new configuration) restart at once; anything else is a crash: wait ``BACKOFF`` (1, 2, 4, ... 30 s), and after
``LOOP_CRASHES`` crashes each within ``LOOP_WINDOW`` seconds of its start, state ``crash-loop``:
still retried, every ``LOOP_BACKOFF`` seconds, until a run lasts ``LOOP_WINDOW`` (then the count
resets). The state is ``supervisor.json``; the log ``supervisor.log`` (rotated at 256 KiB).

``service/stop`` present means "stay stopped": the supervisor ends the agent (SIGTERM, then
SIGKILL after ``STOP_GRACE``) and exits; so does SIGTERM to the supervisor.
"""

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

BACKOFF = (1, 2, 4, 8, 16, 30)
LOOP_CRASHES = 5
LOOP_WINDOW = 30.0
LOOP_BACKOFF = 60.0
STOP_GRACE = 10.0
EXIT_SWITCH = 3
LOG_LIMIT = 256 << 10

# bash, as an ssh command gets (the board user's login shell): CANN's set_env.sh finds its own folder
# through BASH_SOURCE, which dash (/bin/sh on Ubuntu, what cron gives) does not set
SHELL = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"

# The agent's command: env.sh sourced (CANN paths, the app's env), PYTHONPATH pinned to the release
AGENT_SH = (
    'if [ -r "$1" ]; then . "$1"; fi; '
    'PYTHONPATH="$2/site:$2${PYTHONPATH:+:$PYTHONPATH}"; export PYTHONPATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1; '
    'cd "$2" && exec "$3" -m agent service --config "$4" --release "$2"'
)


def _write_atomic(path, text):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class Supervisor:
    def __init__(self, service_dir):
        self.dir = os.path.abspath(service_dir)
        self.app_dir = os.path.dirname(self.dir)
        with open(os.path.join(self.dir, "config.json")) as f:
            self.cfg = json.load(f)
        self.python = self.cfg.get("python") or sys.executable
        # the restart policy; config.json may shorten it (tests), never needed on a board
        self.backoff = tuple(self.cfg.get("backoff") or BACKOFF)
        self.loop_crashes = int(self.cfg.get("loop_crashes") or LOOP_CRASHES)
        self.loop_window = float(self.cfg.get("loop_window") or LOOP_WINDOW)
        self.loop_backoff = float(self.cfg.get("loop_backoff") or LOOP_BACKOFF)
        self.child = None
        self.stopping = False
        self.state = {"pid": os.getpid(), "state": "starting", "since": round(time.time(), 3), "restarts": 0,
                      "crashes": 0, "last_exit": None, "last_start": None, "agent_pid": None,
                      "method": self.cfg.get("method", "")}

    def log(self, message):
        path = os.path.join(self.dir, "supervisor.log")
        try:
            if os.path.exists(path) and os.path.getsize(path) > LOG_LIMIT:
                os.replace(path, path + ".1")
            with open(path, "a") as f:
                f.write("{} {}\n".format(time.strftime("%Y-%m-%d %H:%M:%S"), message))
        except OSError:
            pass

    def save(self, **changes):
        self.state.update(changes)
        try:
            _write_atomic(os.path.join(self.dir, "supervisor.json"), json.dumps(self.state, indent=1) + "\n")
        except OSError:
            pass

    def stop_requested(self):
        return self.stopping or os.path.exists(os.path.join(self.dir, "stop"))

    def release(self):
        """The pinned release's directory, else ``current``'s; None when neither exists."""
        try:
            with open(os.path.join(self.dir, "release")) as f:
                rid = f.read().strip()
        except OSError:
            rid = ""
        if rid and "/" not in rid and os.path.isdir(os.path.join(self.app_dir, "releases", rid)):
            return os.path.join(self.app_dir, "releases", rid)
        cur = os.path.join(self.app_dir, "current")
        return os.path.realpath(cur) if os.path.isdir(cur) else None

    def start_agent(self, release):
        out = open(os.path.join(self.dir, "agent.log"), "ab")
        try:
            env = os.path.join(release, "env.sh")  # the release's own environment (older releases: the app's)
            if not os.path.exists(env):
                env = os.path.join(self.app_dir, "env.sh")
            self.child = subprocess.Popen(
                [SHELL, "-c", AGENT_SH, "agent", env, release, self.python,
                 os.path.join(self.dir, "config.json")],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=release,
            )
        finally:
            out.close()
        self.save(agent_pid=self.child.pid, last_start=round(time.time(), 3), release=os.path.basename(release))
        self.log(f"agent started (pid {self.child.pid}, release {os.path.basename(release)})")

    def wait_child(self, timeout=None):
        """The child's exit status, or None if it still runs after ``timeout``; stop requests end it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            code = self.child.poll()
            if code is not None:
                return code
            if self.stop_requested():
                return self.end_child()
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    def end_child(self):
        if self.child is None or self.child.poll() is not None:
            return None if self.child is None else self.child.returncode
        self.child.terminate()
        try:
            return self.child.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.child.kill()
            return self.child.wait()

    def sleep(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.stop_requested():
            time.sleep(0.1)

    def run(self):
        consecutive = 0
        while not self.stop_requested():
            release = self.release()
            if release is None:
                self.save(state="waiting", reason="no release deployed")
                self.sleep(5.0)
                continue
            started = time.monotonic()
            self.start_agent(release)
            self.save(state="crash-loop" if consecutive >= self.loop_crashes else "running")
            if consecutive >= self.loop_crashes:
                code = self.wait_child(self.loop_window)  # running again, but not out of the loop until it lasts
                if code is None:
                    consecutive = 0
                    self.save(state="running", crashes=0)
                    code = self.wait_child()
            else:
                code = self.wait_child()
            ran = time.monotonic() - started
            self.save(last_exit=code, agent_pid=None)
            if self.stop_requested():
                break
            if code in (EXIT_SWITCH, 0):  # a release switch, or ended on request (a new configuration)
                self.log("agent exited with {} ({}); restarting at once".format(
                    code, "release switch" if code else "stopped on request"))
                self.save(restarts=self.state["restarts"] + 1)
                continue
            consecutive = consecutive + 1 if ran < self.loop_window else 1
            if consecutive >= self.loop_crashes:
                delay, state = self.loop_backoff, "crash-loop"
            else:
                delay, state = self.backoff[min(consecutive, len(self.backoff)) - 1], "backoff"
            self.log(f"agent exited with {code} after {ran:.1f}s; {state} restart in {delay:.0f}s")
            self.save(state=state, crashes=consecutive, restarts=self.state["restarts"] + 1,
                      retry_at=round(time.time() + delay, 3))
            self.sleep(delay)
        self.end_child()
        self.save(state="stopped", agent_pid=None)
        self.log("supervisor stopped")


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: supervisor.py SERVICE_DIR\n")
        return 2
    service_dir = os.path.abspath(argv[1])
    lock = open(os.path.join(service_dir, "supervisor.lock"), "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return 0  # already supervised
        raise
    if os.path.exists(os.path.join(service_dir, "stop")):
        return 0  # stopped by `deploy service stop`; an old @reboot line or unit must not start it again
    sup = Supervisor(service_dir)
    _write_atomic(os.path.join(service_dir, "supervisor.pid"), f"{os.getpid()}\n")

    def on_term(signum, frame):
        sup.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sup.log("supervisor started (pid {}, {})".format(os.getpid(), sup.state["method"] or "direct"))
    try:
        sup.run()
    finally:
        try:
            os.unlink(os.path.join(service_dir, "supervisor.pid"))
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
