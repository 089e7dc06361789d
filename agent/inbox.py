"""The service's inbox: which files are complete, claiming them, and disposing of them afterwards.

When is a file in the inbox complete (never read half-written)?

* **It arrived by rename** (``mv``, ``rsync``'s temporary-then-rename, a writer that writes
  ``.name.part`` and renames): taken at once. On Linux the inbox is watched with inotify
  (``IN_MOVED_TO``, through ctypes), which is also what wakes the service without polling delay.
* **Otherwise** (written in place, or present when the service started, or no inotify): taken once
  its size and mtime have not changed for ``settle`` seconds. A writer that pauses longer than
  ``settle`` mid-file defeats this: such writers must write elsewhere (or to a dot-name) and rename.

Only regular files directly in the inbox are taken; names starting with ``.`` (temporary files by
convention), directories, links and devices are left alone.

Claiming is a rename into ``<inbox>/.work/<claim>~<name>`` (policy ``move``/``delete``), or a hard
link there (policy ``keep``: the file stays in the inbox and ``<inbox>/.work/kept.idx`` remembers it
by name, inode, size and mtime). Either way the claim is atomic on the inbox's own filesystem, a
file removed between listing and claiming is simply not claimed, and after a crash ``.work`` says
exactly which images were taken but may lack a record. Disposal (``done/`` for ``move``) happens
only after the image's journal record is durable. Python 3.7 compatible.
"""

import errno
import os
import select
import stat
import struct
import time

POLICIES = ("keep", "move", "delete")
CLAIM_BLOCK = 1000  # claim ids reserved on disk at a time
IN_MOVED_TO = 0x00000080
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")


class Claimed:
    """One claimed image: ``path`` is what the pipeline reads (in ``.work``)."""

    __slots__ = ("claim", "name", "path", "arrived", "size")

    def __init__(self, claim, name, path, arrived, size):
        self.claim = claim
        self.name = name
        self.path = path
        self.arrived = arrived
        self.size = size


class _Inotify:
    """IN_MOVED_TO events of one directory, through libc (None when unavailable)."""

    def __init__(self, path):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self.fd, os.fsencode(path), IN_MOVED_TO) < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, "inotify_add_watch")

    def wait(self, timeout):
        """Names moved in since the last call (waiting up to ``timeout`` seconds for the first)."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        names = []
        if not ready:
            return names
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return names
                raise
            pos = 0
            while pos + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                raw = data[pos + _EVENT.size:pos + _EVENT.size + length].rstrip(b"\0")
                pos += _EVENT.size + length
                if mask & IN_MOVED_TO and raw:
                    names.append(os.fsdecode(raw))

    def close(self):
        os.close(self.fd)


class Inbox:
    def __init__(self, path, policy="move", settle=2.0):
        if policy not in POLICIES:
            raise ValueError("policy must be one of {}, not {!r}".format(", ".join(POLICIES), policy))
        self.path = path
        self.policy = policy
        self.settle = float(settle)
        self.work = os.path.join(path, ".work")
        self.done = os.path.join(path, "done")
        self.kept_idx = os.path.join(self.work, "kept.idx")
        self.claims_file = os.path.join(self.work, "claims")
        self.claim_limit = 0
        self.kept = set()  # (name, inode, size, mtime_ns) of images kept in place (policy keep)
        self.moved = set()  # names that arrived by rename and are not claimed yet
        self.busy = set()  # names claimed by a link and not yet disposed of (policy keep)
        self._seen = {}  # name -> ((size, mtime_ns), first time seen so)
        self._watch = None
        self.waiting = 0
        self.next_claim = 1

    def open(self, max_claim=0):
        for d in (self.path, self.work) + ((self.done,) if self.policy == "move" else ()):
            os.makedirs(d, exist_ok=True)
        try:
            self._watch = _Inotify(self.path)
        except (OSError, AttributeError, ImportError):
            self._watch = None  # no inotify: every file waits for its size to settle
        self._load_kept()
        try:
            with open(self.claims_file) as f:
                reserved = int(f.read().strip() or 0)
        except (OSError, ValueError):
            reserved = 0
        self.next_claim = max(reserved, max_claim + 1, max((c.claim for c in self.work_files()), default=0) + 1)
        self.claim_limit = self.next_claim
        return self

    def _reserve(self):
        """Raise the claim high-water mark (``.work/claims``) before handing out claims below it: every claim
        ever given is below the mark on disk, so a claim id is never reused after a crash, however the
        journal's segments were rotated or removed."""
        limit = self.next_claim + CLAIM_BLOCK
        tmp = self.claims_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{limit}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.claims_file)
        self.claim_limit = limit

    @property
    def watching(self):
        return self._watch is not None

    def close(self):
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    # --- after a crash ------------------------------------------------------------------
    def work_files(self):
        """Images claimed before (a crash or a stop between claim and disposal), oldest claim first."""
        out = []
        try:
            names = os.listdir(self.work)
        except OSError:
            return out
        for n in names:
            head, sep, name = n.partition("~")
            if sep and head.isdigit():
                p = os.path.join(self.work, n)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                out.append(Claimed(int(head), name, p, st.st_mtime, st.st_size))
                if self.policy == "keep":
                    self.busy.add(name)
        return sorted(out, key=lambda c: c.claim)

    # --- arrivals ------------------------------------------------------------------------
    def wait(self, timeout):
        """Sleep until something may have arrived (inotify) or ``timeout`` passes."""
        if self._watch is None:
            time.sleep(timeout)
            return
        try:
            self.moved.update(self._watch.wait(timeout))
        except OSError:
            self._watch = None

    def ready(self, limit, now=None):
        """Names of complete files to claim (at most ``limit``), oldest first; sets ``waiting``."""
        now = time.time() if now is None else now
        if self._watch is not None:
            try:
                self.moved.update(self._watch.wait(0))
            except OSError:
                self._watch = None
        entries = []
        try:
            it = os.scandir(self.path)
        except OSError:
            self.waiting = 0
            return []
        with it:
            for e in it:
                if e.name.startswith(".") or e.name in self.busy:
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                if self.kept and (e.name, st.st_ino, st.st_size, st.st_mtime_ns) in self.kept:
                    continue
                entries.append((st.st_mtime, e.name, st))
        entries.sort()
        names = set()
        take = []
        for _mtime, name, st in entries:
            names.add(name)
            sig = (st.st_size, st.st_mtime_ns)
            if name in self.moved:
                ok = True
            else:
                prev = self._seen.get(name)
                if prev is None or prev[0] != sig:
                    self._seen[name] = (sig, now)
                    ok = False
                else:
                    ok = now - prev[1] >= self.settle
            if ok and len(take) < limit:
                take.append(name)
        for gone in [n for n in self._seen if n not in names]:
            del self._seen[gone]
        self.moved &= names
        self.waiting = len(entries)
        return take

    def claim(self, name):
        """Take ``name`` out of the inbox atomically; None when it vanished meanwhile."""
        src = os.path.join(self.path, name)
        if self.next_claim >= self.claim_limit:
            self._reserve()
        claim = self.next_claim
        dst = os.path.join(self.work, f"{claim}~{name}")
        try:
            st = os.lstat(src)
            if self.policy == "keep":
                os.link(src, dst)
            else:
                os.rename(src, dst)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                self.moved.discard(name)
                self._seen.pop(name, None)
                return None
            raise
        self.next_claim += 1
        if self.policy == "keep":
            self.busy.add(name)
        self.moved.discard(name)
        self._seen.pop(name, None)
        return Claimed(claim, name, dst, time.time(), st.st_size)

    # --- after the record is durable -------------------------------------------------------
    def dispose(self, c):
        """Per the policy: move to ``done/``, delete, or keep in place (remember it). Returns bytes added to done/."""
        if self.policy == "move":
            dst = os.path.join(self.done, c.name)
            if os.path.lexists(dst):
                stem, ext = os.path.splitext(c.name)
                dst = os.path.join(self.done, f"{stem}.{c.claim}{ext}")
            os.rename(c.path, dst)
            return c.size
        if self.policy == "keep":
            try:
                st = os.lstat(c.path)
                key = (c.name, st.st_ino, st.st_size, st.st_mtime_ns)
                if key not in self.kept:
                    with open(self.kept_idx, "a", encoding="utf-8", errors="surrogateescape") as f:
                        f.write(f"{st.st_ino}\t{st.st_size}\t{st.st_mtime_ns}\t{c.name}\n")
                        f.flush()
                        os.fsync(f.fileno())
                    self.kept.add(key)
            except OSError:
                pass
            self.busy.discard(c.name)
        os.unlink(c.path)
        return 0

    def _load_kept(self):
        """kept.idx, minus images no longer in the inbox as they were (rewritten when it shrank)."""
        if self.policy != "keep":
            return
        rows = []
        try:
            with open(self.kept_idx, encoding="utf-8", errors="surrogateescape") as f:
                lines = f.read().splitlines()
        except OSError:
            lines = []
        for line in lines:
            parts = line.split("\t", 3)
            if len(parts) != 4:
                continue
            try:
                key = (parts[3], int(parts[0]), int(parts[1]), int(parts[2]))
            except ValueError:
                continue
            try:
                st = os.lstat(os.path.join(self.path, key[0]))
            except OSError:
                continue
            if (st.st_ino, st.st_size, st.st_mtime_ns) == key[1:]:
                rows.append(key)
        self.kept = set(rows)
        if len(rows) != len(lines):
            tmp = self.kept_idx + ".tmp"
            with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
                for k in rows:
                    f.write(f"{k[1]}\t{k[2]}\t{k[3]}\t{k[0]}\n")
            os.replace(tmp, self.kept_idx)

    def done_bytes(self):
        if self.policy != "move":
            return 0
        total = 0
        try:
            with os.scandir(self.done) as it:
                for e in it:
                    try:
                        total += e.stat(follow_symlinks=False).st_size
                    except OSError:
                        pass
        except OSError:
            pass
        return total
