"""SIMULATED cron for sandbox boards: a ``crontab`` stand-in that records entries, and a "reboot" that runs them.

This machine (a container) has no cron daemon and no user systemd, and a sandbox board cannot be
rebooted, so the service's boot path is proven with two stand-ins, both plainly not the real thing:

* ``~/.sandbox/bin/crontab`` on the board (first on the board's PATH): ``-l``, ``-r``, ``-`` / FILE like
  crontab(1), storing the table in ``~/.sandbox/crontab``. Nothing ever runs an entry by time.
* :func:`reboot` (``deploy sandbox reboot BOARD``): kills, by PID, every process whose environment
  has this board's ``HOME`` (the board's processes, and only this board's: simulated Atlas boards
  share the Unix user ``HwHiAiUser`` but never a home), then runs each ``@reboot`` entry as cron
  would: ``/bin/sh -c`` as the board's user, cron's minimal environment (HOME, LOGNAME, USER,
  SHELL=/bin/sh, PATH=/usr/bin:/bin), in its own session. The board's sshd stays up (it is the
  sandbox's door, not one of the board's processes), and ``/tmp`` and ``/run`` are not cleared.

Emulated (aarch64) boards get the crontab stand-in but no reboot: their processes run in a chroot.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import SandboxError
from .host import pid_running

CRONTAB_SH = r"""#!/bin/sh
# SANDBOX STAND-IN for crontab(1), written by atlas-deploy's sandbox (deploy/sandbox/cron.py).
# It only records the table in $HOME/.sandbox/crontab: no daemon runs it by time, and
# `deploy sandbox reboot BOARD` runs its @reboot lines (a simulated reboot).
f="$HOME/.sandbox/crontab"
case "$1" in
  -l) if [ -f "$f" ]; then cat "$f"; else echo "no crontab for $(id -un)" >&2; exit 1; fi ;;
  -r) if [ -f "$f" ]; then rm -f "$f"; else echo "no crontab for $(id -un)" >&2; exit 1; fi ;;
  -|"") mkdir -p "$HOME/.sandbox" && cat > "$f.tmp" && mv "$f.tmp" "$f" ;;
  -*) echo "crontab (sandbox stand-in): unsupported option $1" >&2; exit 1 ;;
  *) if [ -r "$1" ]; then mkdir -p "$HOME/.sandbox" && cp "$1" "$f.tmp" && mv "$f.tmp" "$f";
     else echo "crontab: $1: No such file or directory" >&2; exit 1; fi ;;
esac
"""
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CRON_PATH = "/usr/bin:/bin"


def install(login, owner: str | None):
    """Put the stand-in in the board's ``~/.sandbox/bin`` and that first on its PATH; returns the new login."""
    bindir = login.home_on_host / ".sandbox" / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    script = bindir / "crontab"
    script.write_text(CRONTAB_SH)
    script.chmod(0o755)
    if owner and os.geteuid() == 0:  # the home's owner: a host user, or one that exists only in an aarch64 rootfs
        home = login.home_on_host.stat()
        for p in (bindir.parent, bindir, script):
            os.chown(p, home.st_uid, home.st_gid)
    env = dict(login.env)
    env["PATH"] = f"{login.home}/.sandbox/bin:" + env.get("PATH", DEFAULT_PATH)
    return replace(login, env=tuple(env.items()))


@dataclass(frozen=True)
class Reboot:
    board: str
    killed: tuple[int, ...]  # the board's processes, ended by PID
    started: tuple[tuple[int, str], ...]  # (pid, command) of each @reboot entry run

    def to_json(self) -> dict:
        return {"board": self.board, "killed": list(self.killed),
                "started": [{"pid": p, "command": c} for p, c in self.started]}


def board_pids(home: str, exclude: set[int]) -> list[int]:
    """Processes whose environment says ``HOME=<home>`` (readable ones: ours, or all as root)."""
    needle = b"HOME=" + os.fsencode(home)
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle in env:
            pids.append(int(name))
    return pids


def reboot_entries(home: Path) -> list[str]:
    """The ``@reboot`` commands of the board's recorded crontab, ``\\%`` unescaped as cron does."""
    try:
        text = (home / ".sandbox" / "crontab").read_text(errors="surrogateescape")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("@reboot"):
            out.append(line[len("@reboot"):].strip().replace("\\%", "%"))
    return out


def reboot(sb) -> Reboot:
    """Simulate a reboot of sandbox board ``sb`` (a ``sandbox.Sandbox``); see the module doc."""
    if sb.rootfs:
        raise SandboxError(f"{sb.name}: a simulated reboot is not available for emulated (aarch64) boards")
    me = {os.getpid(), os.getppid()}
    if sb.pid:
        me.add(sb.pid)
    pids = board_pids(sb.home, me)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)  # a power cut asks nobody
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(pid_running(p) for p in pids):
        time.sleep(0.05)
    entry = pwd.getpwnam(sb.user)
    env = {"HOME": sb.home, "LOGNAME": sb.user, "USER": sb.user, "SHELL": "/bin/sh", "PATH": CRON_PATH}
    demote = None
    if os.geteuid() == 0 and entry.pw_uid != 0:
        def demote():
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
    started = []
    for command in reboot_entries(Path(sb.home)):
        with open(os.devnull, "rb") as null_in, open(os.devnull, "wb") as null_out:
            proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=null_in, stdout=null_out, stderr=null_out,
                                    cwd=sb.home, env=env, start_new_session=True, preexec_fn=demote)
        started.append((proc.pid, command))
    return Reboot(board=sb.name, killed=tuple(pids), started=tuple(started))
