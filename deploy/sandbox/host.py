"""This machine as a sandbox needs it: run a tool (one SandboxError line when it fails), free loopback ports,
paths other users can reach, processes checked and stopped by PID. Shared by the board lifecycle
(``boards.py``) and the board shapes (``atlas.py``, ``mlu.py``, ``cron.py``)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from ..errors import SandboxError
from ..proc import pid_running


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise SandboxError(f"{argv[0]} is not installed (apt-get install openssh-server openssh-client)") from None
    if r.returncode != 0:
        raise SandboxError(f"{' '.join(argv[:3])} failed: {(r.stderr or r.stdout).strip()[:300]}")
    return r


def world_traversable(path: Path) -> bool:
    for p in [path, *path.parents]:
        if p.exists() and not os.stat(p).st_mode & 0o001:
            return False
    return True


def free_port(preferred: int | None) -> int:
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise SandboxError("no free loopback port")


def terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # reap if it is our child (same process)
            if done:
                return
        except ChildProcessError:
            pass
        if not pid_running(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def link_or_copy(src: str, dst: str) -> None:
    """``shutil.copytree``'s copy function for trees the board only reads: a hard link, or a copy across filesystems."""
    try:
        os.link(src, dst)  # the wheel cache's files are read-only for the board anyway
    except OSError:
        shutil.copy2(src, dst)
