"""File primitives every board operation relies on for crash safety. Python 3.7 + stdlib only."""

import errno
import fcntl
import hashlib
import os
import time

from .wire import Fail


def write_atomic(path, data, mode=0o644):
    """Write, fsync, then rename over ``path``: readers see the old or the new file, never half.

    The temporary file is created 0600 (``O_CREAT | O_EXCL``: never an existing file or a link someone
    left there), so a file holding secrets (``env.sh``) is never readable by anyone else, not for the
    moment between creating and chmodding it; it gets ``mode`` only once written."""
    tmp = f"{path}.tmp-{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileExistsError:  # debris of an earlier op that had our pid
        os.unlink(tmp)
        fd = os.open(tmp, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        if mode != 0o600:
            os.fchmod(f.fileno(), mode)
    os.replace(tmp, path)


def read_text(path):
    """A file's text (bytes that are not UTF-8 survive a round trip), or None when it does not exist."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "surrogateescape")
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def sha_text(text):
    return None if text is None else hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Lock:
    """The per-app lock (``<app>/.lock``): one push, health check, rollback or service start/stop at a time,
    refused rather than queued. The holder writes what it is, its pid and since when into the file, so a
    refusal names it in one line."""

    def __init__(self, base, what="deploy operation"):
        os.makedirs(base, exist_ok=True)
        self.what = what
        self.f = open(os.path.join(base, ".lock"), "a+")

    def __enter__(self):
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = held_by(self.f)
            self.f.close()
            raise Fail(f"{holder} holds the lock on this app; try again when it ends") from None
        try:  # best effort: a full disk must not stop a rollback
            self.f.seek(0)
            self.f.truncate()
            self.f.write(f"{self.what}\t{os.getpid()}\t{time.time():.3f}\n")
            self.f.flush()
        except OSError:
            pass
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def held_by(f):
    """``a push (pid 123) since 12:00:03 UTC, 5s ago`` from a lock file's first line, or a plain phrase."""
    try:
        f.seek(0)
        what, pid, since = f.readline().rstrip("\n").split("\t")
        since = float(since)
    except (OSError, ValueError):
        return "another deploy operation"
    when = time.strftime("%H:%M:%S UTC", time.gmtime(since))
    return f"a {what} (pid {pid}) since {when}, {max(0, time.time() - since):.0f}s ago"


def pid_alive(pid):
    """True while ``pid`` runs; a zombie (a child of ours not yet reaped) has ended."""
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
