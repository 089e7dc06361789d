"""Assemble one release for one target: agent code, app config, model variant, ``site/`` wheels.

A release is described by its manifest: (path, size, sha256, mode) per file. Nothing is
copied on the host; each entry points at its local source file (or carries generated
bytes such as ``app.json``). The release id is derived from the manifest, so the same
content always has the same id and a push of unchanged content is recognised as such.

Hashing the ~1,500 files of a ``site/`` tree and a model on every push would cost
seconds, so digests are cached by (path, size, mtime_ns) in ``.deploy/hashcache.json``:
a no-change push stats files but reads none.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import agent

from . import wheelhouse
from .errors import BuildError
from .inventory import App, Board
from .targets import Target

RELEASE_FORMAT = 1


@dataclass(frozen=True)
class Entry:
    path: str  # relative path inside the release, '/'-separated
    size: int
    sha256: str
    mode: int  # 0o644 or 0o755
    src: Path | None = None  # local file, or
    data: bytes | None = None  # generated content

    def row(self) -> list:
        return [self.path, self.size, self.sha256, self.mode]

    def open(self):
        if self.data is not None:
            import io

            return io.BytesIO(self.data)
        return open(self.src, "rb")  # noqa: SIM115 - caller closes


@dataclass(frozen=True)
class Bundle:
    release_id: str
    target: Target
    python: str
    entries: tuple[Entry, ...]
    app_config: dict

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def manifest(self) -> list[list]:
        return [e.row() for e in self.entries]


class HashCache:
    """sha256 digests of local files keyed by (path, size, mtime_ns); stale entries are recomputed."""

    def __init__(self, path: Path):
        self.path = path
        self.dirty = False
        try:
            self.data: dict[str, list] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def digest(self, file: Path, st: os.stat_result) -> str:
        key = str(file)
        hit = self.data.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        h = hashlib.sha256()
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
        self.data[key] = [st.st_size, st.st_mtime_ns, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, separators=(",", ":")))
        os.replace(tmp, self.path)
        self.dirty = False


def agent_source() -> Path:
    """The agent package shipped to boards: the one this host runs (one source of truth)."""
    return Path(agent.__file__).resolve().parent


def model_for(app: App, target: Target, board: Board) -> Path:
    kind = target.model_kind
    model = app.models.get(kind)
    if model is None:
        hint = " (convert one with `deploy model convert`)" if kind == "om" else ""
        raise BuildError(
            f"board {board.name} (target {target.name}, backend {target.backend}) needs an .{kind} model "
            f"but app.models.{kind} is not set in the inventory{hint}"
        )
    if not model.is_file():
        hint = " (run `deploy model demo` to build the demo model)" if kind == "onnx" else ""
        raise BuildError(f"model for board {board.name} not found: {model}{hint}")
    return model


def build(
    app: App,
    board: Board,
    target: Target,
    python: str,
    cache: HashCache,
    *,
    site: Path | None = None,
) -> Bundle:
    """Plan one release for ``board``: every file with its digest, ``app.json``, and the release id.

    ``python`` is the board's CPython version ("3.7"). ``site`` is the unpacked wheel tree to ship
    (default: ``wheelhouse.site_for``, which downloads and caches the target's wheels on first use).
    Nothing is copied; digests come from ``cache``, which is saved. Raises BuildError when the
    target's model, the labels file or the images folder is missing.
    """
    files = _tree_files("agent", agent_source(), (".py",))
    if site is None:
        site = wheelhouse.site_for(target, python)
    files += _tree_files("site", site)
    model = model_for(app, target, board)
    files.append((f"models/{model.name}", model))
    config = _app_config(app, target, python, model)
    files += _app_data(app)
    entries = _entries(files, cache)
    data = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    entries.append(Entry("app.json", len(data), hashlib.sha256(data).hexdigest(), 0o644, data=data))
    entries.sort(key=lambda e: e.path)
    cache.save()
    rid = hashlib.sha256(json.dumps([e.row() for e in entries]).encode()).hexdigest()[:12]
    return Bundle(release_id=rid, target=target, python=python, entries=tuple(entries), app_config=config)


def _tree_files(prefix: str, root: Path, suffixes: tuple[str, ...] | None = None) -> list[tuple[str, Path]]:
    """(release path under ``prefix``, local file) for a tree, in sorted order; no dotfiles or __pycache__."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for fn in sorted(filenames):
            if fn.startswith(".") or (suffixes and not fn.endswith(suffixes)):
                continue
            p = Path(dirpath, fn)
            rel = p.relative_to(root).as_posix()
            files.append((f"{prefix}/{rel}", p))
    return files


def _app_config(app: App, target: Target, python: str, model: Path) -> dict:
    """``app.json``: what the agent on the board runs, with paths relative to the release."""
    return {
        "format": RELEASE_FORMAT,
        "name": app.name,
        "target": target.name,
        "python": python,
        "backend": target.backend,
        "model": f"models/{model.name}",
        "preprocess": app.preprocess,
        "topk": app.topk,
        "batch": app.batch,
        "labels": f"labels/{app.labels.name}" if app.labels is not None else None,
        "images": "images" if app.images is not None else None,
    }


def _app_data(app: App) -> list[tuple[str, Path]]:
    """The app's labels file and images folder, when it names them; BuildError when they are missing."""
    files = []
    if app.labels is not None:
        if not app.labels.is_file():
            raise BuildError(f"labels file not found: {app.labels}")
        files.append((f"labels/{app.labels.name}", app.labels))
    if app.images is not None:
        if not app.images.is_dir():
            raise BuildError(f"images folder not found: {app.images} (run `deploy model demo` for the demo photos)")
        files += _tree_files("images", app.images)
    return files


def _entries(files: list[tuple[str, Path]], cache: HashCache) -> list[Entry]:
    """One Entry per regular file (others are skipped); executables keep 0o755, the rest get 0o644."""
    entries = []
    for rel, src in files:
        st = src.stat()
        if not stat.S_ISREG(st.st_mode):
            continue
        mode = 0o755 if st.st_mode & 0o111 else 0o644
        entries.append(Entry(rel, st.st_size, cache.digest(src, st), mode, src=src))
    return entries
