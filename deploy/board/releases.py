"""Releases on the board: list them, switch ``current``, roll back, verify.

Python 3.7 + stdlib only. ``current`` only ever changes by renaming a fresh symlink over it
(``switch_current``), so a reader sees the old or the new release, never none; receiving a
new release is ``push.py``.
"""

import json
import os
import shutil
import stat
import time

from . import protocol
from .files import Lock, pid_alive, read_text, sha_file, sha_text
from .layout import current_release, list_runs, read_pid, releases_dir, runs_dir, switch_log
from .wire import Fail, check_id


def history(base):
    """(release ids ordered by when each was last made current, {id: first deploy time}).

    Releases age by last use, not by creation: a release that was current a moment ago is
    the one a rollback wants, however old its content is.
    """
    last = {}
    created = {}
    for i, (when, rid, _how) in enumerate(switch_log(base)):
        last[rid] = i
        created.setdefault(rid, when)
    return sorted(last, key=last.get), created


def list_releases(base):
    """Complete releases (renamed into place, with a manifest), least recently current first."""
    rdir = releases_dir(base)
    try:
        names = [n for n in os.listdir(rdir) if not n.startswith(".")]
    except OSError:
        return []
    names = [n for n in names if os.path.isfile(os.path.join(rdir, n, "MANIFEST.json"))]
    rank = {rid: i for i, rid in enumerate(history(base)[0])}

    def key(n):
        if n in rank:
            return (0, rank[n])
        return (-1, os.path.getmtime(os.path.join(rdir, n)))  # never current (an interrupted switch): oldest

    return sorted(names, key=key)


def load_manifest(base, rid):
    with open(os.path.join(releases_dir(base), rid, "MANIFEST.json")) as f:
        return json.load(f)["files"]


def content_index(base, rids):
    """sha256 -> (path of a file already on the board with that content, its mode, its size)."""
    index = {}
    for rid in rids:
        try:
            rows = load_manifest(base, rid)
        except (OSError, ValueError, KeyError):
            continue
        root = os.path.join(releases_dir(base), rid)
        for path, size, sha, mode in rows:
            if sha not in index:
                index[sha] = (os.path.join(root, path), mode, size)
    return index


def switch_current(base, rid, how):
    """Point ``current`` at ``rid`` with one rename(2), then log the switch."""
    link = os.path.join(base, "current")
    tmp = f"{link}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.join("releases", rid), tmp)
    os.replace(tmp, link)  # readers see the old or the new link, never none
    with open(os.path.join(base, "releases.log"), "a") as f:
        f.write(f"{time.time():.3f} {rid} {how}\n")


ENV = "env.sh"
ENV_LINK = os.path.join("current", ENV)  # <app>/env.sh: the environment switches with ``current``
APP_ENV_MARK = "# app.env"  # envblock.env_sh: the inventory's variables follow this line


def link_env(base):
    """Make ``<app>/env.sh`` the link ``current/env.sh`` (what ~/.bashrc's block and every command source), so
    the environment is switched, checked, reverted and rolled back with ``current`` in the same rename.

    A board pushed to by an older version has a file there: it is given to every release that has no env.sh
    of its own (it was theirs: the environment they ran with), then replaced by the link in one rename.
    """
    path = os.path.join(base, ENV)
    if os.path.islink(path) and os.readlink(path) == ENV_LINK:
        return False
    if os.path.isfile(path) and not os.path.islink(path):
        for rid in list_releases(base):
            own = os.path.join(releases_dir(base), rid, ENV)
            if not os.path.lexists(own):
                os.link(path, own)
    tmp = f"{path}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(ENV_LINK, tmp)
    os.replace(tmp, path)
    return True


def release_env(base, rid):
    """(the inventory's variables a release's env.sh sets, secret-looking values masked by key; the first 12
    hex digits of its sha256, "" without one)."""
    import shlex

    path = os.path.join(releases_dir(base), rid, ENV)
    try:
        text = read_text(path)
    except OSError:  # not ours to read
        return {}, "?"
    if text is None:
        return {}, ""
    env, ours = {}, False
    for line in text.splitlines():
        ours = ours or line.startswith(APP_ENV_MARK)
        if ours and line.startswith("export ") and "=" in line:
            key, _, value = line[len("export "):].partition("=")
            try:
                words = shlex.split(value)
            except ValueError:
                words = [value]
            env[key] = "***" if protocol.secret_key(key) else (words[0] if words else "")
    return env, sha_text(text)[:12]


def releases_in_use(base):
    """Releases that running agents were started from: never pruned under a live run."""
    used = set()
    for run in list_runs(base):
        run_dir = os.path.join(runs_dir(base), run)
        pid = read_pid(run_dir)
        if pid and pid_alive(pid):
            try:
                with open(os.path.join(run_dir, "job.json")) as f:
                    used.add(os.path.basename(json.load(f)["release"].rstrip("/")))
            except (OSError, ValueError, KeyError):
                pass
    svc = os.path.join(base, "service")
    used.add((read_text(os.path.join(svc, "release")) or "").strip())  # a service's pinned release
    try:  # and the one its agent still runs
        with open(os.path.join(svc, "status.json")) as f:
            used.add(json.load(f).get("release") or "")
    except (OSError, ValueError, AttributeError):
        pass
    used.discard("")
    return used


def prune(base, keep):
    """Keep the ``keep`` most recently current releases; never ``current``, never one a live run uses."""
    cur = current_release(base)
    rels = list_releases(base)
    busy = releases_in_use(base)
    doomed = [r for r in rels if r != cur][: max(0, len(rels) - keep)]
    doomed = [r for r in doomed if r not in busy]
    for rid in doomed:
        shutil.rmtree(os.path.join(releases_dir(base), rid), ignore_errors=True)
    return doomed


def release_infos(base):
    cur = current_release(base)
    created = history(base)[1]
    out = []
    for r in list_releases(base):
        env, env_sha = release_env(base, r)
        out.append(protocol.ReleaseInfo(id=r, current=r == cur, created=created.get(r), env=env, env_sha=env_sha))
    return out


def op_releases(wire, req):
    base = wire.app_dir(req.app)
    wire.reply(protocol.ReleasesReply(current=current_release(base), releases=release_infos(base)))


def previous_current(base, cur, rels):
    """The release that was current just before ``cur`` became current (still on the board)."""
    switches = [rid for _, rid, _ in switch_log(base)]
    last = max((i for i, rid in enumerate(switches) if rid == cur), default=None)
    if last is None:
        return None
    for rid in reversed(switches[:last]):
        if rid != cur and rid in rels:
            return rid
    return None


def rollback_target(base, cur, rels, to):
    if not to:
        found = previous_current(base, cur, rels)
        if found is None:
            raise Fail(f"no earlier release to roll back to (current: {cur})")
        return found
    matches = [r for r in rels if r == to or r.startswith(to)]
    if len(matches) != 1:
        raise Fail("no single release matches {!r} (have: {})".format(to, ", ".join(rels) or "none"))
    return matches[0]


def op_rollback(wire, req):
    base = wire.app_dir(req.app)
    with Lock(base, "rollback"):
        cur = current_release(base)
        to = rollback_target(base, cur, list_releases(base), req.to)
        if to != cur:
            switch_current(base, to, "rollback")
        wire.reply(protocol.RollbackReply(ok=True, previous=cur, current=to))


def op_verify(wire, req):
    """Re-hash every file of a release against its manifest (after interrupted pushes, and in tests)."""
    base = wire.app_dir(req.app)
    rid = check_id(req.release or current_release(base), "release id")
    rows = load_manifest(base, rid)
    root = os.path.join(releases_dir(base), rid)
    bad = []
    for path, _size, sha, mode in rows:
        p = os.path.join(root, path)
        try:
            if sha_file(p) != sha or stat.S_IMODE(os.stat(p).st_mode) != mode:
                bad.append(path)
        except OSError:
            bad.append(path)
    wire.reply(protocol.VerifyReply(release=rid, files=len(rows), bad=bad))
