"""Local processes: running a tool that talks a lot and fails at the end (atc, debootstrap), and whether a
process still runs (the one pid check of the host side; the board has its own in ``board/files.py``)."""

from __future__ import annotations

import collections
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def stream(argv: Sequence[str], progress: Callable[[str], None] | None = None, keep: int = 20,
           env: Mapping[str, str] | None = None) -> tuple[int, list[str]]:
    """Run ``argv`` with stdout+stderr merged, passing each line to ``progress`` (``env``: the whole environment).

    Returns (exit status, the last ``keep`` lines): such tools print the reason of a failure
    last, so the tail is what an error message should carry.
    """
    tail: collections.deque[str] = collections.deque(maxlen=keep)
    with subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, errors="replace",
        env=dict(env) if env is not None else None,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if progress is not None:
                progress(line)
        code = proc.wait()
    return code, list(tail)


def last_line(tail: Sequence[str], default: str) -> str:
    return next((ln.strip() for ln in reversed(tail) if ln.strip()), default)


def pid_running(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its parent (or init) to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False
