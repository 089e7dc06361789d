"""The board half of every deploy operation. Runs ON THE BOARD, not on the host.

The host never copies this file: it sends its source inline, ``python3 -I -c SOURCE OP``,
so a board needs nothing installed but python3 (>= 3.7), and each operation costs one
SSH round trip. Requests arrive as one JSON line on stdin; replies are JSON lines on
stdout; bulk data (tar streams) follows the request line on the same channel.

Everything here must stay Python 3.7 + stdlib (checked with vermin), and must leave the
board consistent if the connection drops at any instant: releases are assembled in a
staging directory, renamed into place, and ``current`` is switched by renaming a fresh
symlink over it. A per-app lock file serialises pushes, so any staging directory found
while holding the lock is debris of an interrupted push and is removed.

Layout (per app)::

    ~/HIAI_PROJECTS/<app>/releases/<id>/     immutable; MANIFEST.json lists (path, size, sha256, mode)
    ~/HIAI_PROJECTS/<app>/current -> releases/<id>
    ~/HIAI_PROJECTS/<app>/env.sh
    ~/HIAI_PROJECTS/<app>/releases.log       "<unix time> <id> <push|rollback>" per switch
    ~/HIAI_PROJECTS/<app>/runs/<run-id>/
"""

import errno
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
HOME = os.path.expanduser("~")


class Fail(Exception):
    pass


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def read_request():
    line = sys.stdin.buffer.readline()
    if not line:
        raise Fail("no request received")
    return json.loads(line.decode("utf-8"))


def check_id(value, what):
    if not isinstance(value, str) or not ID_RE.match(value):
        raise Fail(f"invalid {what}: {value!r}")
    return value


def app_dir(req):
    return os.path.join(HOME, "HIAI_PROJECTS", check_id(req.get("app"), "app name"))


def safe_rel(path):
    """A manifest or tar path must stay inside its directory."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\x00" in path:
        raise Fail(f"unsafe path {path!r}")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise Fail(f"unsafe path {path!r}")
    return path


def write_atomic(path, data, mode=0o644):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def read_text(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "surrogateescape")
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def sha_text(text):
    return None if text is None else hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


class Lock:
    def __init__(self, base):
        os.makedirs(base, exist_ok=True)
        self.f = open(os.path.join(base, ".lock"), "a")

    def __enter__(self):
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise Fail("another deploy operation holds the lock on this app; try again when it ends") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


# ---------------------------------------------------------------- facts


def facts():
    st = os.statvfs(HOME)
    os_name = ""
    text = read_text("/etc/os-release") or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            os_name = line.split("=", 1)[1].strip().strip('"')
    return {
        "arch": platform.machine(),
        "python": "{}.{}.{}".format(*sys.version_info[:3]),
        "python_exe": sys.executable,
        "home": HOME,
        "free_bytes": st.f_bavail * st.f_frsize,
        "os": os_name,
        "user": os.environ.get("USER") or str(os.getuid()),
    }


def op_facts(req):
    out = facts()
    probe = req.get("probe") or []
    if "acl" in probe:
        r = subprocess.run([sys.executable, "-c", "import acl; print(getattr(acl, '__file__', ''))"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out["acl"] = {"ok": r.returncode == 0, "detail": (r.stdout or r.stderr).strip().splitlines()[-1:] }
    if "npu-smi" in probe:
        exe = shutil.which("npu-smi")
        if exe:
            r = subprocess.run([exe, "info"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            out["npu_smi"] = {"ok": r.returncode == 0, "output": r.stdout[-4000:]}
        else:
            out["npu_smi"] = None
    for mod in req.get("modules") or []:
        r = subprocess.run([sys.executable, "-c", f"import {mod}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        out.setdefault("modules", {})[mod] = r.returncode == 0
    reply(out)


# ---------------------------------------------------------------- releases


def releases_dir(base):
    return os.path.join(base, "releases")


def current_release(base):
    try:
        target = os.readlink(os.path.join(base, "current"))
    except OSError:
        return None
    return os.path.basename(target.rstrip("/"))


def history(base):
    """(release ids ordered by when each was last made current, {id: first deploy time}) from releases.log.

    Releases age by last use, not by creation: a release that was current a moment ago is
    the one a rollback wants, however old its content is.
    """
    last = {}
    created = {}
    text = read_text(os.path.join(base, "releases.log")) or ""
    for i, line in enumerate(text.splitlines()):
        parts = line.split()
        if len(parts) >= 2:
            last[parts[1]] = i
            if parts[1] not in created:
                try:
                    created[parts[1]] = float(parts[0])
                except ValueError:
                    created[parts[1]] = None
    return sorted(last, key=last.get), created


def list_releases(base):
    """Complete releases (renamed into place, with a manifest), least recently current first."""
    rdir = releases_dir(base)
    try:
        names = [n for n in os.listdir(rdir) if not n.startswith(".")]
    except OSError:
        return []
    names = [n for n in names if os.path.isfile(os.path.join(rdir, n, "MANIFEST.json"))]
    order, created = history(base)
    rank = {rid: i for i, rid in enumerate(order)}

    def key(n):
        if n in rank:
            return (0, rank[n])
        return (-1, os.path.getmtime(os.path.join(rdir, n)))  # never current (an interrupted switch): oldest

    return sorted(names, key=key)


def load_manifest(base, rid):
    with open(os.path.join(releases_dir(base), rid, "MANIFEST.json")) as f:
        return json.load(f)["files"]


def content_index(base, rids):
    """sha256 -> (path of a file already on the board with that content, its mode)."""
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
    link = os.path.join(base, "current")
    tmp = f"{link}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.join("releases", rid), tmp)
    os.replace(tmp, link)  # rename(2): readers see the old or the new link, never none
    with open(os.path.join(base, "releases.log"), "a") as f:
        f.write(f"{time.time():.3f} {rid} {how}\n")


def clean_debris(base):
    rdir = releases_dir(base)
    removed = []
    if os.path.isdir(rdir):
        for n in os.listdir(rdir):
            if n.startswith(".staging-"):
                shutil.rmtree(os.path.join(rdir, n), ignore_errors=True)
                removed.append(n)
    for n in os.listdir(base):
        if ".tmp-" in n:
            p = os.path.join(base, n)
            if os.path.islink(p) or os.path.isfile(p):
                os.unlink(p)
    return removed


def releases_in_use(base):
    """Releases that running agents were started from: never pruned under a live run."""
    used = set()
    rdir = runs_dir(base)
    for run in list_runs(base):
        run_dir = os.path.join(rdir, run)
        pid = read_pid(run_dir)
        if pid and pid_alive(pid):
            try:
                with open(os.path.join(run_dir, "job.json")) as f:
                    used.add(os.path.basename(json.load(f)["release"].rstrip("/")))
            except (IOError, OSError, ValueError, KeyError):
                pass
    return used


def prune(base, keep):
    cur = current_release(base)
    rels = list_releases(base)
    busy = releases_in_use(base)
    doomed = [r for r in rels if r != cur][: max(0, len(rels) - keep)]
    doomed = [r for r in doomed if r not in busy]
    for rid in doomed:
        shutil.rmtree(os.path.join(releases_dir(base), rid), ignore_errors=True)
    return doomed


def receive_objects(objdir, need):
    """Read a tar stream of objects named by sha256 from stdin; verify each digest and size.

    Parsed here rather than with tarfile's stream mode, which reads 10 KiB records and copies
    each chunk again: on a slow board that costs more CPU than the hashing.
    """
    got = {}
    inp = sys.stdin.buffer  # not a new reader on fd 0: this one may already hold the stream's start
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while True:
        block = inp.read(tarfile.BLOCKSIZE)
        if len(block) < tarfile.BLOCKSIZE:
            raise Fail("object stream ended early")
        if block == tarfile.NUL * tarfile.BLOCKSIZE:
            break
        member = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        name = member.name
        if not member.isfile() or not SHA_RE.match(name) or name not in need or name in got:
            raise Fail(f"unexpected entry in object stream: {name!r}")
        h = hashlib.sha256()
        left = member.size
        with open(os.path.join(objdir, name), "wb") as out:
            while left:
                n = inp.readinto(view[: min(left, len(buf))])
                if not n:
                    raise Fail("object stream ended early")
                h.update(view[:n])
                out.write(view[:n])
                left -= n
        inp.read(-member.size % tarfile.BLOCKSIZE)
        if h.hexdigest() != name:
            raise Fail(f"content of {name} arrived corrupted (sha256 {h.hexdigest()})")
        got[name] = member.size
    missing = set(need) - set(got)
    if missing:
        raise Fail(f"{len(missing)} object(s) did not arrive")
    return got


def assemble(base, rid, rows, index, objdir, staging):
    linked = 0
    made_dirs = set()
    for path, size, sha, mode in rows:
        safe_rel(path)
        dst = os.path.join(staging, path)
        parent = os.path.dirname(dst)
        if parent not in made_dirs:
            os.makedirs(parent, exist_ok=True)
            made_dirs.add(parent)
        obj = os.path.join(objdir, sha)
        if os.path.exists(obj):
            src, src_mode = obj, None
        else:
            src, src_mode, _ = index[sha]
        if src_mode is None:
            # a fresh object: the first path takes the object itself, later identical files copy
            os.rename(obj, dst)
            os.chmod(dst, mode)
            index[sha] = (dst, mode, size)
            continue
        if src_mode == mode:
            try:
                os.link(src, dst)  # unchanged content shares the inode of the older release
                linked += 1
                continue
            except OSError:
                pass
        shutil.copyfile(src, dst)
        os.chmod(dst, mode)
    return linked


def op_push(req):
    base = app_dir(req)
    rid = check_id(req.get("release"), "release id")
    rows = req["manifest"]
    keep = int(req.get("keep", 5))
    with Lock(base):
        debris = clean_debris(base)
        rels = list_releases(base)
        cur = current_release(base)
        exists = rid in rels
        need = []
        index = {}
        if not exists:
            ordered = ([cur] if cur in rels else []) + [r for r in reversed(rels) if r != cur]
            index = content_index(base, ordered)
            need = sorted({sha for _, _, sha, _ in rows if sha not in index})
        env_path = os.path.join(base, "env.sh")
        bashrc_path = os.path.join(HOME, ".bashrc")
        bashrc = read_text(bashrc_path)
        reply({
            "facts": facts(),
            "current": cur,
            "releases": rels,
            "exists": exists,
            "missing": need,
            "env_sh": read_text(env_path),
            "bashrc": bashrc,
            "debris": debris,
        })
        cmd = read_request()
        if cmd.get("action") != "commit":
            reply({"ok": True, "aborted": True})
            return
        received = {}
        linked = 0
        if not exists:
            staging = os.path.join(releases_dir(base), f".staging-{rid}-{os.getpid()}")
            objdir = os.path.join(staging, ".objects")
            os.makedirs(objdir)
            if need:
                received = receive_objects(objdir, set(need))
            linked = assemble(base, rid, rows, index, objdir, staging)
            os.rmdir(objdir)
            manifest = {"format": 1, "release": rid, "created": time.time(), "files": rows}
            write_atomic(os.path.join(staging, "MANIFEST.json"), json.dumps(manifest).encode())
            os.rename(staging, os.path.join(releases_dir(base), rid))
        env_sh = cmd.get("env_sh")
        if env_sh is not None and env_sh != read_text(env_path):
            write_atomic(env_path, env_sh.encode("utf-8"), 0o600)
        new_bashrc = cmd.get("bashrc")
        bashrc_changed = False
        if new_bashrc is not None and new_bashrc != bashrc:
            now = read_text(bashrc_path)
            if sha_text(now) != sha_text(bashrc):
                raise Fail("~/.bashrc changed on the board during the push; nothing was switched, push again")
            mode = stat.S_IMODE(os.stat(bashrc_path).st_mode) if now is not None else 0o644
            backup = bashrc_path + ".deploy-backup"
            if now is not None and not os.path.exists(backup):
                shutil.copy2(bashrc_path, backup)
            write_atomic(bashrc_path, new_bashrc.encode("utf-8", "surrogateescape"), mode)
            bashrc_changed = True
        switched = cur != rid
        if switched:
            switch_current(base, rid, "push")
        pruned = prune(base, keep)
        reply({
            "ok": True,
            "release": rid,
            "previous": cur,
            "switched": switched,
            "received_objects": len(received),
            "received_bytes": sum(received.values()),
            "linked": linked,
            "pruned": pruned,
            "bashrc_changed": bashrc_changed,
            "debris_removed": debris,
        })


def release_info(base, rid, cur, created):
    return {"id": rid, "current": rid == cur, "created": created.get(rid)}


def op_releases(req):
    base = app_dir(req)
    cur = current_release(base)
    _, created = history(base)
    reply({"current": cur, "releases": [release_info(base, r, cur, created) for r in list_releases(base)]})


def previous_current(base, cur, rels):
    """The release that was current just before ``cur`` became current (still on the board)."""
    switches = [ln.split()[1] for ln in (read_text(os.path.join(base, "releases.log")) or "").splitlines()
                if len(ln.split()) >= 2]
    last = max((i for i, rid in enumerate(switches) if rid == cur), default=None)
    if last is None:
        return None
    for rid in reversed(switches[:last]):
        if rid != cur and rid in rels:
            return rid
    return None


def op_rollback(req):
    base = app_dir(req)
    with Lock(base):
        rels = list_releases(base)
        cur = current_release(base)
        to = req.get("to")
        if to:
            matches = [r for r in rels if r == to or r.startswith(to)]
            if len(matches) != 1:
                raise Fail("no single release matches {!r} (have: {})".format(to, ", ".join(rels) or "none"))
            to = matches[0]
        else:
            to = previous_current(base, cur, rels)
            if to is None:
                raise Fail(f"no earlier release to roll back to (current: {cur})")
        if to != cur:
            switch_current(base, to, "rollback")
        reply({"ok": True, "previous": cur, "current": to})


# ---------------------------------------------------------------- runs


def runs_dir(base):
    return os.path.join(base, "runs")


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    try:  # a zombie child of ours is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def read_pid(run_dir):
    text = read_text(os.path.join(run_dir, "launcher.pid"))
    try:
        return int(text.strip()) if text else None
    except ValueError:
        return None


def extract_inputs(dest):
    """Unpack an uploaded image folder: regular files and directories only, nothing outside dest."""
    os.makedirs(dest, exist_ok=True)
    count = 0
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tf:
        for member in tf:
            rel = safe_rel(member.name)
            out = os.path.join(dest, rel)
            if member.isdir():
                os.makedirs(out, exist_ok=True)
                continue
            if not member.isfile():
                raise Fail(f"refusing non-regular file in upload: {member.name!r}")
            os.makedirs(os.path.dirname(out), exist_ok=True)
            src = tf.extractfile(member)
            with open(out, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 20)
            count += 1
    return count


def pinned_env(release):
    """The agent's environment: PYTHONPATH entries through `current` pinned to this release."""
    env = dict(os.environ)
    link = os.path.join(os.path.dirname(os.path.dirname(release)), "current")
    parts = [p.replace(link, release, 1) if p.startswith(link) else p for p in env.get("PYTHONPATH", "").split(":") if p]
    for p in (os.path.join(release, "site"), release):
        if p not in parts:
            parts.insert(0, p)
    env["PYTHONPATH"] = ":".join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def op_run(req):
    base = app_dir(req)
    run_id = check_id(req.get("run_id"), "run id")
    run_dir = os.path.join(runs_dir(base), run_id)
    resume = bool(req.get("resume"))
    if os.path.isdir(run_dir) and not resume:
        raise Fail(f"run {run_id} already exists on the board")
    if resume and not os.path.isdir(run_dir):
        raise Fail(f"no run {run_id} on the board to resume")
    os.makedirs(run_dir, exist_ok=True)
    pid = read_pid(run_dir)
    if pid and pid_alive(pid):
        raise Fail(f"run {run_id} is still running (pid {pid}); use --attach")
    if req.get("upload"):
        extract_inputs(os.path.join(run_dir, "inputs"))
    job_path = os.path.join(run_dir, "job.json")
    if resume and os.path.isfile(job_path):
        with open(job_path) as f:
            job = json.load(f)
        release = job["release"]
        if not os.path.isdir(release):
            raise Fail(f"release {os.path.basename(release)} of run {run_id} no longer exists")
    else:
        cur = os.path.join(base, "current")
        if not os.path.isdir(cur):
            raise Fail("nothing deployed for this app yet: run `deploy push` first")
        release = os.path.realpath(cur)
        with open(os.path.join(release, "app.json")) as f:
            app = json.load(f)
        # the job describes what is deployed (the release's app.json), not the host's inventory of today
        job = {
            "v": 1,
            "mode": req.get("mode", "run"),
            "model": app["model"],
            "backend": app["backend"],
            "preprocess": app.get("preprocess") or {"preset": "imagenet"},
            "labels": app.get("labels"),
            "inputs": [app["images"]] if app.get("images") else [],
            "batch": app.get("batch", 1),
            "topk": app.get("topk", 5),
            "labelled": True,
        }
        job.update(req.get("overrides") or {})
        if req.get("upload"):
            job["inputs"] = [os.path.join(run_dir, "inputs")]
        if not job["inputs"] and job["mode"] != "bench":
            raise Fail("the app has no images and none were given (use --images DIR)")
        job.update({"run_id": run_id, "release": release, "out_dir": run_dir})
        write_atomic(job_path, json.dumps(job, indent=2).encode())
    events = os.path.join(run_dir, "events.jsonl")
    offset = os.path.getsize(events) if os.path.exists(events) else 0  # a resumed run: only new events
    log = open(os.path.join(run_dir, "agent.log"), "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", job.get("mode", "run"), "--job", job_path],
        cwd=release, env=pinned_env(release), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # the run survives the SSH session that started it
    )
    log.close()
    write_atomic(os.path.join(run_dir, "launcher.pid"), str(proc.pid).encode())
    reply({"helper": "started", "run_id": run_id, "pid": proc.pid, "release": os.path.basename(release)})
    if req.get("follow", True):
        follow(run_dir, proc.pid, proc, offset)


def follow(run_dir, pid, proc, offset):
    """Copy events.jsonl to stdout as it grows, until an end event or the agent is gone."""
    path = os.path.join(run_dir, "events.jsonl")
    pos = offset
    partial = b""
    ended = False
    deadline_after_exit = None
    while True:
        data = b""
        try:
            with open(path, "rb") as f:
                f.seek(pos)
                data = f.read()
        except OSError:
            pass
        if data:
            pos += len(data)
            chunk = partial + data
            lines = chunk.split(b"\n")
            partial = lines.pop()
            for line in lines:
                if line.strip():
                    sys.stdout.buffer.write(line + b"\n")
                    if b'"event":"end"' in line or b'"event": "end"' in line:
                        ended = True
            sys.stdout.buffer.flush()
        if ended:
            break
        alive = proc.poll() is None if proc is not None else pid_alive(pid)
        if not alive:
            if deadline_after_exit is None:
                deadline_after_exit = time.time() + 1.0  # let the last writes land
            elif time.time() > deadline_after_exit:
                break
        time.sleep(0.05 if data else 0.1)
    code = proc.wait() if proc is not None else None
    reply({"helper": "exit", "ended": ended, "code": code, "offset": pos})


def op_attach(req):
    base = app_dir(req)
    run_id = check_id(req.get("run_id"), "run id")
    run_dir = os.path.join(runs_dir(base), run_id)
    if not os.path.isdir(run_dir):
        raise Fail(f"no run {run_id} on the board")
    pid = read_pid(run_dir) or 0
    reply({"helper": "attached", "run_id": run_id, "pid": pid, "running": bool(pid and pid_alive(pid))})
    follow(run_dir, pid, None, int(req.get("offset", 0)))


def op_stop(req):
    base = app_dir(req)
    run_dir = os.path.join(runs_dir(base), check_id(req.get("run_id"), "run id"))
    pid = read_pid(run_dir)
    stopped = False
    if pid and pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        stopped = True
    reply({"ok": True, "stopped": stopped, "pid": pid})


def run_summary(run_dir):
    info = {"id": os.path.basename(run_dir), "status": (read_text(os.path.join(run_dir, "status")) or "").strip() or None}
    pid = read_pid(run_dir)
    if pid and pid_alive(pid):
        info["status"] = "running"
    text = read_text(os.path.join(run_dir, "summary.json"))
    if text:
        try:
            info["summary"] = json.loads(text)
        except ValueError:
            pass
    info["mtime"] = os.path.getmtime(run_dir)
    return info


def list_runs(base):
    rdir = runs_dir(base)
    try:
        names = [n for n in os.listdir(rdir) if ID_RE.match(n) and os.path.isdir(os.path.join(rdir, n))]
    except OSError:
        return []
    return sorted(names, key=lambda n: os.path.getmtime(os.path.join(rdir, n)))


def op_pull(req):
    base = app_dir(req)
    runs = list_runs(base)
    run_id = req.get("run_id")
    if run_id:
        check_id(run_id, "run id")
        if run_id not in runs:
            raise Fail("no run {} on the board (have: {})".format(run_id, ", ".join(runs[-5:]) or "none"))
    elif runs:
        run_id = runs[-1]
    else:
        raise Fail("no runs on the board yet: start one with `deploy run`")
    run_dir = os.path.join(runs_dir(base), run_id)
    skip = set(req.get("exclude") or [])
    files = []
    for dirpath, dirnames, filenames in os.walk(run_dir):
        rel_dir = os.path.relpath(dirpath, run_dir)
        dirnames[:] = sorted(d for d in dirnames if (d if rel_dir == "." else None) not in skip)
        for fn in sorted(filenames):
            p = os.path.join(dirpath, fn)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            files.append(p)
    reply({"run_id": run_id, "files": len(files), "bytes": sum(os.path.getsize(p) for p in files)})
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for p in files:
            tf.add(p, arcname=os.path.relpath(p, run_dir), recursive=False)
    sys.stdout.buffer.flush()


def op_status(req):
    base = app_dir(req)
    cur = current_release(base)
    _, created = history(base)
    bashrc = read_text(os.path.join(HOME, ".bashrc")) or ""
    begin = req.get("marker_begin") or "\x00"
    runs = list_runs(base)
    reply({
        "facts": facts(),
        "app_dir": base,
        "current": cur,
        "current_ok": bool(cur) and os.path.isdir(os.path.join(base, "current")),
        "releases": [release_info(base, r, cur, created) for r in list_releases(base)],
        "env_sh": os.path.isfile(os.path.join(base, "env.sh")),
        "bashrc_blocks": bashrc.count(begin),
        "runs": [run_summary(os.path.join(runs_dir(base), r)) for r in runs[-int(req.get("runs", 5)):]],
    })


def op_verify(req):
    """Re-hash every file of a release against its manifest (used after interrupted pushes and by tests)."""
    base = app_dir(req)
    rid = req.get("release") or current_release(base)
    bad = []
    rows = load_manifest(base, check_id(rid, "release id"))
    root = os.path.join(releases_dir(base), rid)
    for path, _size, sha, mode in rows:
        p = os.path.join(root, path)
        try:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            if h.hexdigest() != sha or stat.S_IMODE(os.stat(p).st_mode) != mode:
                bad.append(path)
        except OSError:
            bad.append(path)
    reply({"release": rid, "files": len(rows), "bad": bad})


OPS = {
    "facts": op_facts,
    "push": op_push,
    "releases": op_releases,
    "rollback": op_rollback,
    "run": op_run,
    "attach": op_attach,
    "stop": op_stop,
    "pull": op_pull,
    "status": op_status,
    "verify": op_verify,
}


def main():
    op = sys.argv[1] if len(sys.argv) > 1 else ""
    if op not in OPS:
        reply({"error": f"unknown operation {op!r}"})
        return 2
    try:
        OPS[op](read_request())
    except Fail as exc:
        reply({"error": str(exc)})
        return 1
    except (tarfile.TarError, EOFError) as exc:
        reply({"error": f"transfer interrupted: {exc}"})
        return 1
    except OSError as exc:
        reply({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
