"""Assemble one release for one target: agent code, app config, model variant, ``site/`` wheels.

A release is described by its manifest: (path, size, sha256, mode) per file. Nothing is
copied on the host; each entry points at its local source file (or carries generated
bytes such as ``app.json``). The release id is derived from the manifest, so the same
content always has the same id and a push of unchanged content is recognised as such.

Digests come from the hash cache (``hashcache.py``): a no-change push stats files but reads none.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .. import hostagent
from ..errors import BuildError
from ..inventory import App, Board
from ..targets import Target
from . import probe as probe_mod
from . import wheelhouse
from .hashcache import HashCache
from .probe import Probe
from .variant import model_for

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
    probe: Probe | None = None  # the health check's image (None: the app has none to offer)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def manifest(self) -> list[list]:
        return [e.row() for e in self.entries]


def build(
    app: App,
    board: Board,
    target: Target,
    python: str,
    cache: HashCache,
    *,
    site: Path | None = None,
    state_dir: Path | None = None,
    root: Path | None = None,
) -> Bundle:
    """Plan one release for ``board``: every file with its digest, ``app.json``, and the release id.

    ``python`` is the board's CPython version ("3.7"). ``site`` is the unpacked wheel tree to ship
    (default: ``wheelhouse.site_for``, which downloads and caches the target's wheels on first use).
    ``state_dir`` (the project's ``.deploy``) is where a sandbox Atlas board's simulated .om is kept
    (see :func:`model_for`).
    The health check's probe and ``health/health.json`` come from :func:`deploy.release.probe.probe_for`.
    Nothing is copied; digests come from ``cache``, which is saved. Raises BuildError when the
    target's model, the labels file, the images folder or app.health.probe is missing, or when a
    symlink among them leads outside the app (``root``: the project; see :func:`_app_data`).
    """
    files = _tree_files("agent", hostagent.AGENT_DIR, (".py",))
    if site is None:
        site = wheelhouse.site_for(target, python)
    files += _tree_files("site", site)
    model = model_for(app, target, board, state_dir)
    files.append((f"models/{model.name}", model))
    config = _app_config(app, target, python, model)
    files += _app_data(app, root)
    probe = probe_mod.probe_for(app, cache, state_dir)  # with the host's own top-1 for it, cached
    if probe is not None:
        files.append((probe.path, probe.image))
    entries = _entries(files, cache)
    generated = {"app.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()}
    if probe is not None:
        generated[probe_mod.SPEC] = probe.spec()
    for path, data in generated.items():
        entries.append(Entry(path, len(data), hashlib.sha256(data).hexdigest(), 0o644, data=data))
    entries.sort(key=lambda e: e.path)
    cache.save()
    rid = hashlib.sha256(json.dumps([e.row() for e in entries]).encode()).hexdigest()[:12]
    return Bundle(release_id=rid, target=target, python=python, entries=tuple(entries), app_config=config,
                  probe=probe)


def _tree_files(prefix: str, root: Path, suffixes: tuple[str, ...] | None = None,
                inside: Path | None = None) -> list[tuple[str, Path]]:
    """(release path under ``prefix``, local file) for a tree, in sorted order; no dotfiles or __pycache__.
    With ``inside``, every symlink in the tree (to a file or a folder) must lead inside it: BuildError if not."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for name in dirnames if inside is not None else ():  # a link to a folder is not walked, but said
            _check_inside(Path(dirpath, name), root, inside)
        for fn in sorted(filenames):
            if fn.startswith(".") or (suffixes and not fn.endswith(suffixes)):
                continue
            p = Path(dirpath, fn)
            if inside is not None:
                _check_inside(p, root, inside)
            rel = p.relative_to(root).as_posix()
            files.append((f"{prefix}/{rel}", p))
    return files


def _check_inside(p: Path, root: Path, inside: Path) -> None:
    if p.is_symlink() and not p.resolve().is_relative_to(inside):
        raise BuildError(f"{root.name}/{p.relative_to(root).as_posix()} is a symlink to {os.readlink(p)}, outside "
                         f"{root}; the bundle ships only files of the app")


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
        # the acl backend's options (async mode...); other backends take none
        "backend_options": app.backend_options if target.backend == "acl" else _mm_options(app, target),
    }


def _mm_options(app: App, target: Target) -> dict:
    """The magicmind backend's options (the MLU device id) from app.backend_options; others take none."""
    if target.backend != "magicmind":
        return {}
    return {k: v for k, v in app.backend_options.items() if k == "device"}


def _app_data(app: App, root: Path | None) -> list[tuple[str, Path]]:
    """The app's labels file and images folder, when it names them; BuildError when they are missing.

    The bundle ships only files of the app: a symlink in ``app.images`` must lead to a file inside that
    folder (then it is followed), and a labels, model or probe path that is, or goes through, a symlink
    must lead inside the project (``root``), or, for a path named outside the project, inside the folder
    it is named in. Anything else is refused in one line, before any of it is read."""
    named = [("app.labels", app.labels), ("app.health.probe", app.probe),
             *((f"app.models.{k}", p) for k, p in app.models.items())]
    for field, path in named:
        if path is not None:
            _check_link(field, path, root)
    files = []
    if app.labels is not None:
        if not app.labels.is_file():
            raise BuildError(f"labels file not found: {app.labels}")
        files.append((f"labels/{app.labels.name}", app.labels))
    if app.images is not None:
        if not app.images.is_dir():
            raise BuildError(f"images folder not found: {app.images} (run `deploy model demo` for the demo photos)")
        files += _tree_files("images", app.images, inside=app.images.resolve())
    return files


def _check_link(field: str, path: Path, root: Path | None) -> None:
    """A named file may be a link only to a file inside its tree (the project, else the folder named)."""
    lexical = Path(os.path.normpath(path))
    tree = root if root is not None and lexical.is_relative_to(root) else lexical.parent
    real = path.resolve()
    if real != lexical and not real.is_relative_to(tree.resolve()):
        raise BuildError(f"{field}: {path} leads to {real}, outside {tree}; the bundle ships only files of the app "
                         "(name the file itself)")


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
