"""A run's outputs and the app's state, as the host asks for them: pull and status.

Python 3.7 + stdlib only. ``pull`` streams a run directory as tar; links on the board are
never followed and never sent.
"""

import json
import os
import tarfile

from . import protocol
from .facts import gather
from .files import read_text
from .layout import current_release, list_runs, runs_dir
from .releases import release_infos
from .runs import clean_debris, run_info
from .watch import settle
from .wire import Fail, check_run_id


def pick_run(base, run_id):
    """The run to pull (the newest that started, by default), ended first if its agent is gone without an end."""
    runs = [r for r in list_runs(base) if os.path.isfile(os.path.join(runs_dir(base), r, "job.json"))]
    if run_id:
        check_run_id(run_id)
        if run_id not in runs:
            raise Fail("no run {} on the board (have: {})".format(run_id, ", ".join(runs[-5:]) or "none"))
    elif not runs:
        raise Fail("no runs on the board yet: start one with `deploy run`")
    run_id = run_id or runs[-1]
    settle(os.path.join(runs_dir(base), run_id))
    return run_id


def run_files(run_dir, skip):
    """Regular files of a run directory (links are never followed), minus top-level ``skip`` dirs."""
    files = []
    for dirpath, dirnames, filenames in os.walk(run_dir):
        top = os.path.relpath(dirpath, run_dir) == "."
        dirnames[:] = sorted(d for d in dirnames if not (top and d in skip))
        for fn in sorted(filenames):
            p = os.path.join(dirpath, fn)
            if not os.path.islink(p) and os.path.isfile(p):
                files.append(p)
    return files


def command_files(run_dir, skip):
    """An own app's run: its own files (logs, events, summary; not the working tree) and, as ``outputs/``,
    what the app wrote under ``app.outputs`` in its tree. Links are never followed, and an outputs path
    that is (or passes through) a link is refused: it could lead anywhere on the board."""
    pairs = [(p, os.path.relpath(p, run_dir)) for p in run_files(run_dir, set(skip) | {"tree"})]
    job = json.loads(read_text(os.path.join(run_dir, "job.json")) or "{}")
    if not job.get("outputs"):
        return pairs
    tree = os.path.join(run_dir, "tree")
    out = os.path.normpath(os.path.join(tree, job.get("workdir") or ".", job["outputs"]))
    rel = os.path.relpath(out, tree)
    if rel == ".." or rel.startswith("../"):
        raise Fail(f"app.outputs {job['outputs']!r} leaves the run's tree")
    walk = tree
    for part in [] if rel == "." else rel.split("/"):
        walk = os.path.join(walk, part)
        if os.path.islink(walk):
            raise Fail(f"app.outputs: {rel} passes through a symbolic link on the board; it is never followed")
    if os.path.isdir(out):
        pairs += [(p, "outputs/" + os.path.relpath(p, out)) for p in run_files(out, set())]
    return pairs


class _Exactly:
    """A file read as exactly ``size`` bytes: what grew since the listing is not sent, and what shrank fails."""

    def __init__(self, f, size):
        self.f = f
        self.left = size

    def read(self, n=-1):
        data = self.f.read(self.left if n < 0 else min(n, self.left))
        self.left -= len(data)
        return data


def op_pull(wire, req):
    """The run directory as a tar stream of exactly what PullHead announced (each file's size as listed, so a
    results.jsonl that grows during the pull cannot make the stream larger than the host was told)."""
    base = wire.app_dir(req.app)
    run_id = pick_run(base, req.run_id)
    run_dir = os.path.join(runs_dir(base), run_id)
    if os.path.isdir(os.path.join(run_dir, "tree")):
        pairs = command_files(run_dir, req.exclude)
    else:
        pairs = [(p, os.path.relpath(p, run_dir)) for p in run_files(run_dir, set(req.exclude))]
    members = []
    for p, name in pairs:
        info = tarfile.TarInfo(name)
        st = os.stat(p)
        if st.st_size > 1 << 26 and st.st_blocks * 512 < st.st_size // 2:  # nothing a run writes has holes
            raise Fail(f"{info.name} is a sparse file of {st.st_size} bytes; not pulled")
        info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), 0o644
        members.append((p, info))
    wire.reply(protocol.PullHead(run_id=run_id, files=len(members), bytes=sum(i.size for _, i in members)))
    with tarfile.open(fileobj=wire.stdout, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for p, info in members:
            with open(p, "rb") as f:
                tf.addfile(info, _Exactly(f, info.size))
    wire.stdout.flush()


def _service_info(base):
    from .service import info  # only status needs it

    return info(base)


def op_status(wire, req):
    base = wire.app_dir(req.app)
    clean_debris(base)  # uploads whose op was killed before its run was whole
    cur = current_release(base)
    bashrc = read_text(os.path.join(wire.home, ".bashrc")) or ""
    runs = list_runs(base)[-int(req.runs):]
    wire.reply(protocol.StatusReply(
        facts=gather(wire.home),
        app_dir=base,
        current=cur,
        current_ok=bool(cur) and os.path.isdir(os.path.join(base, "current")),
        releases=release_infos(base),
        env_sh=os.path.isfile(os.path.join(base, "env.sh")),
        bashrc_blocks=bashrc.count(req.marker_begin or "\x00"),
        runs=[run_info(os.path.join(runs_dir(base), r)) for r in runs],
        service=_service_info(base),
    ))
