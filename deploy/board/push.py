"""Receiving a release on the board: plan, receive objects, assemble, switch, prune.

Python 3.7 + stdlib only. Every step leaves the board consistent if the connection drops
at any instant: a release is assembled in a staging directory, renamed into place, and
``current`` is switched by renaming a fresh symlink over it. The per-app lock serialises
pushes, so a staging directory found while holding the lock is debris of an interrupted
push and is removed.
"""

import errno
import hashlib
import json
import math
import os
import shutil
import signal
import stat
import tarfile
import time
import zlib

from . import protocol
from .facts import gather
from .files import Lock, read_text, sha_text, write_atomic
from .health import mark_checking, passed
from .layout import current_release, releases_dir
from .releases import content_index, link_env, list_releases, load_manifest, prune, switch_current
from .wire import SHA_RE, Fail, check_id, safe_rel


def clean_debris(base):
    """Remove what interrupted pushes left (staging directories, temporary links); call under the lock."""
    rdir = releases_dir(base)
    removed = []
    if os.path.isdir(rdir):
        for n in os.listdir(rdir):
            if n.startswith(".staging-"):
                shutil.rmtree(os.path.join(rdir, n), ignore_errors=True)
                removed.append(n)
    for n in os.listdir(base):
        p = os.path.join(base, n)
        if ".tmp-" in n and (os.path.islink(p) or os.path.isfile(p)):
            os.unlink(p)
    return removed


def receive_objects(inp, objdir, need):
    """Read a tar stream of objects named by sha256 from ``inp``; verify each digest and size.

    ``need`` maps each sha256 to its size. A member ``<sha256>.z`` is the object zlib-compressed
    (deploy/objstream.py): inflated as it arrives, and refused unless it expands to exactly the
    expected size (no more: a small member cannot fill the disk) and digest.

    Parsed here rather than with tarfile's stream mode, which reads 10 KiB records and copies
    each chunk again: on a slow board that costs more CPU than the hashing. ``inp`` must be
    the same buffered reader the request line came from (it may already hold the stream's start).
    """
    got = {}
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while True:
        block = inp.read(tarfile.BLOCKSIZE)
        if len(block) < tarfile.BLOCKSIZE:
            raise Fail("object stream ended early")
        if block == tarfile.NUL * tarfile.BLOCKSIZE:
            break
        member = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        packed = member.name.endswith(".z")
        name = member.name[:-2] if packed else member.name
        if not member.isfile() or not SHA_RE.match(name) or name not in need or name in got:
            raise Fail(f"unexpected entry in object stream: {member.name!r}")
        if packed:
            _receive_packed(inp, view, os.path.join(objdir, name), name, member.size, need[name])
        else:
            _receive_one(inp, view, os.path.join(objdir, name), name, member.size)
        inp.read(-member.size % tarfile.BLOCKSIZE)
        got[name] = need[name]
    missing = set(need) - set(got)
    if missing:
        raise Fail(f"{len(missing)} object(s) did not arrive")
    return got


def _receive_one(inp, view, path, sha, size):
    h = hashlib.sha256()
    left = size
    with open(path, "wb") as out:
        while left:
            n = inp.readinto(view[: min(left, len(view))])
            if not n:
                raise Fail("object stream ended early")
            h.update(view[:n])
            out.write(view[:n])
            left -= n
    if h.hexdigest() != sha:
        raise Fail(f"content of {sha} arrived corrupted (sha256 {h.hexdigest()})")


def _receive_packed(inp, view, path, sha, packed, size):
    h = hashlib.sha256()
    z = zlib.decompressobj()
    left, out_n = packed, 0
    with open(path, "wb") as out:
        while left or not z.eof:
            if left:
                n = inp.readinto(view[: min(left, len(view))])
                if not n:
                    raise Fail("object stream ended early")
                left -= n
                data = z.decompress(view[:n], size - out_n + 1)
                if z.unconsumed_tail:  # more than the object's size is in there
                    raise Fail(f"content of {sha} expands beyond its {size} bytes")
            else:
                data = z.flush()
                if not z.eof:
                    raise Fail(f"content of {sha} arrived truncated")
            out_n += len(data)
            if out_n > size:
                raise Fail(f"content of {sha} expands beyond its {size} bytes")
            h.update(data)
            out.write(data)
    if out_n != size or z.unused_data or h.hexdigest() != sha:
        raise Fail(f"content of {sha} arrived corrupted (sha256 {h.hexdigest()}, {out_n} bytes)")


def assemble(rows, index, objdir, staging):
    """Lay the release's files out in ``staging``: fresh objects moved in, known content hard-linked."""
    linked = 0
    made_dirs = set()
    for path, size, sha, mode in rows:
        dst = os.path.join(staging, safe_rel(path))
        parent = os.path.dirname(dst)
        if parent not in made_dirs:
            os.makedirs(parent, exist_ok=True)
            made_dirs.add(parent)
        obj = os.path.join(objdir, sha)
        if os.path.exists(obj):  # a fresh object: the first path takes it, later identical files copy
            os.chmod(obj, mode)  # before it appears in the tree: env.sh is 0600 from its first moment there
            os.rename(obj, dst)
            index[sha] = (dst, mode, size)
            continue
        src, src_mode, _ = index[sha]
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


class PushSession:
    """One push under the app lock: plan (what is missing), then commit (receive, assemble, switch)."""

    def __init__(self, wire, req):
        self.wire = wire
        self.req = req
        self.manifest = req.manifest
        self.base = wire.app_dir(req.app)
        self.rid = check_id(req.release, "release id")
        self.bashrc_path = os.path.join(wire.home, ".bashrc")
        self.env_path = os.path.join(self.base, "env.sh")

    def resolve_manifest(self):
        """The whole manifest from a delta against release ``base`` (checked: its rows must hash to the release
        id); False when ``base`` is not here."""
        if self.manifest or not self.req.base:
            return True
        try:
            rows = {row[0]: row for row in load_manifest(self.base, check_id(self.req.base, "release id"))}
        except (OSError, ValueError, KeyError):
            return False
        for path in self.req.removed:
            rows.pop(path, None)
        rows.update((row[0], row) for row in self.req.changed)
        self.manifest = [rows[p] for p in sorted(rows)]
        return hashlib.sha256(json.dumps(self.manifest).encode()).hexdigest()[:12] == self.rid

    def plan(self):
        if not self.resolve_manifest():
            return protocol.PushState(need_manifest=True)
        debris = clean_debris(self.base)
        rels = list_releases(self.base)
        self.cur = current_release(self.base)
        self.exists = self.rid in rels
        self.index = {}
        self.need = []
        if not self.exists:
            ordered = ([self.cur] if self.cur in rels else []) + [r for r in reversed(rels) if r != self.cur]
            self.index = content_index(self.base, ordered)
            self.need = sorted({row[2] for row in self.manifest if row[2] not in self.index})
        self.bashrc = read_text(self.bashrc_path)
        st = os.statvfs(self.base)
        return protocol.PushState(
            facts=gather(self.wire.home), current=self.cur, releases=rels, exists=self.exists, missing=self.need,
            env_sh=read_text(self.env_path), bashrc=self.bashrc, debris=debris, free_bytes=st.f_bavail * st.f_frsize,
        )

    def stage(self, hold=0.0):
        """Receive the missing objects and rename the assembled release into place; nothing is switched yet.
        On any failure the staging directory is removed at once: a full disk is not left full.

        With ``hold`` (seconds) the assembled release waits in its staging directory for the host's go
        (``await_go``) before it is renamed into place: None when the host said abort, and an error when the
        host went away or said nothing in time; either way the staging directory is removed (or, if this
        process is killed, left as debris the next push removes under the lock), nothing was switched."""
        staging = os.path.join(releases_dir(self.base), f".staging-{self.rid}-{os.getpid()}")
        try:
            got = ({}, 0) if self.exists else self._stage(staging)
            if hold and not self.await_go(hold, *got):
                shutil.rmtree(staging, ignore_errors=True)
                return None
            if not self.exists:
                os.rename(staging, os.path.join(releases_dir(self.base), self.rid))
            return got
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                st = os.statvfs(self.base)
                free = st.f_bavail * st.f_frsize >> 20
                raise Fail(f"{exc.strerror} on the board ({self.base}); the push's staging directory is removed "
                           f"({free} MB free now), the previous release is still current") from None
            raise

    def _stage(self, staging):
        received, linked = {}, 0
        objdir = os.path.join(staging, ".objects")
        os.makedirs(objdir, 0o700)  # objects in flight (env.sh among them) are nobody else's to read
        if self.need:
            sizes = {row[2]: row[1] for row in self.manifest}
            received = receive_objects(self.wire.stdin, objdir, {sha: sizes[sha] for sha in self.need})
        linked = assemble(self.manifest, self.index, objdir, staging)
        os.rmdir(objdir)
        # imported here: only a push that stages needs importlib.util, not one of nothing new
        from .bytecode import compile_release

        compile_release(staging, self.manifest, self.index)  # the only bytecode its agent will read
        manifest = {"format": 1, "release": self.rid, "created": time.time(), "files": self.manifest}
        write_atomic(os.path.join(staging, "MANIFEST.json"), json.dumps(manifest).encode())
        return received, linked

    def await_go(self, hold, received, linked):
        """Say the release is staged, then wait up to ``hold`` seconds for "switch" (True) or "abort" (False).
        The object stream's second end block is read first: the go line follows it on the same stream."""
        if self.need and self.wire.stdin.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
            raise Fail("the object stream did not end with its two zero blocks")
        self.wire.reply(protocol.PushStaged(release=self.rid, received_objects=len(received),
                                            received_bytes=sum(received.values()), linked=linked))
        with deadline(hold, f"no go from the host within {hold:g}s: the staged release is removed, nothing was "
                            "switched"):
            cmd = self.wire.read(protocol.PushCommit)
        if cmd.action not in ("switch", "abort"):
            raise Fail(f"expected switch or abort after the release was staged, not {cmd.action!r}")
        return cmd.action == "switch"

    def write_bashrc(self, new):
        """Replace ~/.bashrc only if it is still what the plan saw; the first original is kept as a backup."""
        if new is None or new == self.bashrc:
            return False
        now = read_text(self.bashrc_path)
        if sha_text(now) != sha_text(self.bashrc):
            raise Fail("~/.bashrc changed on the board during the push; nothing was switched, push again")
        mode = stat.S_IMODE(os.stat(self.bashrc_path).st_mode) if now is not None else 0o644
        backup = self.bashrc_path + ".deploy-backup"
        if now is not None and not os.path.exists(backup):
            shutil.copy2(self.bashrc_path, backup)
        write_atomic(self.bashrc_path, new.encode("utf-8", "surrogateescape"), mode)
        return True

    def commit(self, cmd):
        staged = self.stage(float(cmd.hold or 0))
        if staged is None:  # held, and the host said abort: the staged release is gone, nothing switched
            return protocol.PushDone(ok=True, aborted=True, release=self.rid, previous=self.cur)
        received, linked = staged
        link_env(self.base)  # env.sh is the release's: <app>/env.sh -> current/env.sh
        bashrc_changed = self.write_bashrc(cmd.bashrc)
        switched = self.cur != self.rid
        if switched:
            if self.req.health:
                mark_checking(self.base, self.rid)  # no service start pins it before its verdict
            switch_current(self.base, self.rid, "push")
        checked = not switched and passed(self.base, self.rid)
        # a health check follows unless the release was already current and checked: it prunes once it
        # passed, so the release to switch back to is still here if it fails
        pruned = prune(self.base, int(self.req.keep)) if checked or not self.req.health else []
        return protocol.PushDone(
            ok=True, release=self.rid, previous=self.cur, switched=switched, received_objects=len(received),
            received_bytes=sum(received.values()), linked=linked, pruned=pruned,
            bashrc_changed=bashrc_changed, debris_removed=[], checked=checked,
            service=service_enabled(self.base),
        )


class deadline:  # noqa: N801 - a context manager read as a phrase: ``with deadline(5, "late"):``
    """Fail with ``message`` when the block takes longer than ``seconds`` (SIGALRM; the op's main thread only:
    elsewhere, as in a test's thread, no deadline)."""

    def __init__(self, seconds, message):
        self.seconds, self.message, self.old = seconds, message, None

    def _late(self, signum, frame):
        raise Fail(self.message)

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGALRM, self._late)
            signal.alarm(max(1, int(math.ceil(self.seconds))))
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, self.old)


def service_enabled(base):
    """Whether the app has a service that is to run (started and not stopped): the host moves it after the push."""
    svc = os.path.join(base, "service")
    return os.path.isfile(os.path.join(svc, "config.json")) and not os.path.exists(os.path.join(svc, "stop"))


def op_push(wire, req):
    session = PushSession(wire, req)
    with Lock(session.base, "push"):
        state = session.plan()
        wire.reply(state)
        cmd = wire.read(protocol.PushCommit)
        if cmd.action != "commit" or state.need_manifest:
            wire.reply(protocol.PushDone(ok=True, aborted=True))
            return
        done = session.commit(cmd)
        done.debris_removed = state.debris
        wire.reply(done)


