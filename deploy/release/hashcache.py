"""sha256 digests of local files, cached by (path, size, mtime_ns): a no-change push stats files but reads none.

Hashing the ~1,500 files of a ``site/`` tree and a model on every push would cost seconds; the cache lives in
``.deploy/hashcache.json``. The same object keeps each release built in one command (:meth:`HashCache.once`),
so eight boards of one target cost one build.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class HashCache:
    """sha256 digests of local files keyed by (path, size, mtime_ns); stale entries are recomputed.

    One per command, shared by the boards a fleet command works on at once (thread-safe); it also
    keeps each release built in this command (:meth:`once`), so eight boards of one target cost
    one build.
    """

    def __init__(self, path: Path):
        self.path = path
        self.dirty = False
        self._lock = threading.Lock()
        self._built: dict = {}
        self._building: dict = {}
        try:
            self.data: dict[str, list] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def once(self, key, build):
        """``build()``'s result for ``key``, built by the first caller while the others wait; a failure is not kept."""
        with self._lock:
            if key in self._built:
                return self._built[key]
            gate = self._building.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._built:
                    return self._built[key]
            value = build()
            with self._lock:
                self._built[key] = value
            return value

    def digest(self, file: Path, st: os.stat_result) -> str:
        key = str(file)
        hit = self.data.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = file_sha256(file)
        with self._lock:
            self.data[key] = [st.st_size, st.st_mtime_ns, digest]
            self.dirty = True
        return digest

    def save(self) -> None:
        with self._lock:
            if not self.dirty:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp-{threading.get_ident()}")
            tmp.write_text(json.dumps(self.data, separators=(",", ":")))
            os.replace(tmp, self.path)
            self.dirty = False
