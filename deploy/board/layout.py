"""Where things live under ``~/HIAI_PROJECTS/<app>/``, and reading that layout. Python 3.7 + stdlib only.

::

    releases/<id>/     immutable; MANIFEST.json lists (path, size, sha256, mode)
    current -> releases/<id>
    env.sh
    releases.log       "<unix time> <id> <push|rollback>" per switch
    runs/<run-id>/     job.json, launcher.pid, events.jsonl, results.jsonl, ...
"""

import os

from .files import read_text
from .wire import ID_RE


def releases_dir(base):
    return os.path.join(base, "releases")


def runs_dir(base):
    return os.path.join(base, "runs")


def current_release(base):
    """The id ``current`` points at, or None."""
    try:
        target = os.readlink(os.path.join(base, "current"))
    except OSError:
        return None
    return os.path.basename(target.rstrip("/"))


def switch_log(base):
    """[(time or None, release id, how)] in the order the switches happened."""
    rows = []
    for line in (read_text(os.path.join(base, "releases.log")) or "").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            try:
                when = float(parts[0])
            except ValueError:
                when = None
            rows.append((when, parts[1], parts[2] if len(parts) > 2 else ""))
    return rows


def list_runs(base):
    """Run ids, oldest first (by the run directory's mtime)."""
    rdir = runs_dir(base)
    try:
        names = [n for n in os.listdir(rdir) if ID_RE.match(n) and os.path.isdir(os.path.join(rdir, n))]
    except OSError:
        return []
    return sorted(names, key=lambda n: os.path.getmtime(os.path.join(rdir, n)))


def read_pid(run_dir, name="launcher.pid"):
    """The pid of the agent a run was started as (``launcher.pid``; its watcher: ``watcher.pid``), or None."""
    text = read_text(os.path.join(run_dir, name))
    try:
        return int(text.strip()) if text else None
    except ValueError:
        return None
