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
from typing import TYPE_CHECKING

from .. import hostagent
from ..errors import BuildError
from ..inventory import App, Board
from ..targets import Target
from . import envblock, wheelhouse
from . import probe as probe_mod
from .hashcache import HashCache
from .probe import Probe
from .variant import model_for

if TYPE_CHECKING:  # an own app's modules load only for an own app (start-up is budgeted)
    from .cbuild import Built

RELEASE_FORMAT = 1
TREE = "app"  # where an own app's tree lands in a release (apptree.PREFIX)
ENV_SH = "env.sh"  # the release's environment (the inventory's app.env among it): mode 0600, secrets inside


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
    own: bool = False  # the user's own app (app.command): checked by its health command or an import

    @property
    def checkable(self) -> bool:
        """Whether a health check has something to run: the agent's probe, or the own app's check."""
        return self.probe is not None or self.own

    @property
    def env_sh(self) -> str:
        """The release's ``env.sh`` (what every command on the board sources while it is current)."""
        entry = next(e for e in self.entries if e.path == ENV_SH)
        return entry.data.decode("utf-8")

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
    built: Built | None = None,
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
    if app.own is not None:
        return _build_own(app, board, target, python, cache, state_dir, built, root)
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
    generated = {"app.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
                 ENV_SH: envblock.env_sh(app.name, target, app.env).encode("utf-8")}
    if probe is not None:
        generated[probe_mod.SPEC] = probe.spec()
    return _finish(entries, generated, cache, target, python, config, probe)


def _finish(entries: list[Entry], generated: dict[str, bytes], cache: HashCache, target: Target, python: str,
            config: dict, probe: Probe | None) -> Bundle:
    """The generated files added, sorted, the cache saved, and the release id from the manifest."""
    for path, data in generated.items():
        mode = 0o600 if path == ENV_SH else 0o644
        entries.append(Entry(path, len(data), hashlib.sha256(data).hexdigest(), mode, data=data))
    entries.sort(key=lambda e: e.path)
    cache.save()
    rid = hashlib.sha256(json.dumps([e.row() for e in entries]).encode()).hexdigest()[:12]
    return Bundle(release_id=rid, target=target, python=python, entries=tuple(entries), app_config=config,
                  probe=probe, own=config.get("kind") == "command")


def _build_own(app: App, board: Board, target: Target, python: str, cache: HashCache,
               state_dir: Path | None, built: Built | None = None, root: Path | None = None) -> Bundle:
    """The user's own app: its tree under ``app/`` (read-only), the wheels of its requirements.txt in
    ``site/``, this board's model variant when app.models names one, its images, and the agent (the run's
    supervisor, ``agent/command.py``). ``health/health.json`` says what the health check runs."""
    from . import apptree

    own = app.own
    if own.build is not None and built is None:
        raise BuildError(f"board {board.name}: the app is built per target (app.build) and was not built")
    tree = built.files if built is not None else apptree.tree_files(own)
    files = _tree_files("agent", hostagent.AGENT_DIR, (".py",)) + tree
    reqs = wheelhouse.read_requirements(own.requirements) if own.requirements else []
    site = wheelhouse.requirements_site(target, python, reqs) if reqs else None
    if site is not None:
        files += _tree_files("site", site)
    model = model_for(app, target, board, state_dir) if app.models else None
    if model is not None:
        files.append((f"models/{model.name}", model))
    files += _app_data(app, root)
    config = {"format": RELEASE_FORMAT, "kind": "command", "name": app.name, "target": target.name, "python": python,
              "backend": target.backend, "command": own.command, "workdir": own.workdir, "outputs": own.outputs,
              "tree": apptree.PREFIX, "model": f"models/{model.name}" if model else None,
              "images": "images" if app.images is not None else None,
              "labels": f"labels/{app.labels.name}" if app.labels is not None else None}
    health = {"format": 1, "kind": "command", "command": own.health_command, "expect": own.health_expect,
              "imports": top_level_modules(site) if site is not None else []}
    generated = {"app.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
                 probe_mod.SPEC: (json.dumps(health, indent=2, sort_keys=True) + "\n").encode(),
                 ENV_SH: envblock.env_sh(app.name, target, app.env).encode("utf-8")}
    return _finish(_entries(files, cache), generated, cache, target, python, config, None)


def check_local(app: App) -> None:
    """What a release of ``app`` needs from this host that no board decides, checked before any board is
    touched: an own app's tree (globs, links) and its requirements file's lines. BuildError in one line."""
    if app.own is not None:
        from . import apptree

        apptree.tree_files(app.own)
        if app.own.requirements:
            wheelhouse.read_requirements(app.own.requirements)


def top_level_modules(site: Path) -> list[str]:
    """The importable names a site tree provides (``top_level.txt`` of each .dist-info, else its RECORD):
    what the health check of an own app without a health command imports."""
    names: set[str] = set()
    for info in sorted(site.glob("*.dist-info")):
        top = info / "top_level.txt"
        if top.is_file():
            names.update(ln.strip() for ln in top.read_text().splitlines())
            continue
        for line in (info / "RECORD").read_text().splitlines() if (info / "RECORD").is_file() else []:
            first = line.split(",", 1)[0].split("/", 1)[0]
            names.add(first[:-3] if first.endswith(".py") else first)
    return sorted(n for n in names if n.isidentifier() and not n.startswith("_")
                  and ((site / n).is_dir() or (site / f"{n}.py").is_file() or any(site.glob(f"{n}.*.so"))))


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
    """One Entry per regular file (others are skipped); executables keep 0o755, the rest get 0o644; an own
    app's tree is read-only, executable where it was."""
    entries = []
    for rel, src in files:
        st = src.stat()
        if not stat.S_ISREG(st.st_mode):
            continue
        if rel.startswith(TREE + "/"):
            mode = 0o555 if st.st_mode & 0o111 else 0o444
        else:
            mode = 0o755 if st.st_mode & 0o111 else 0o644
        entries.append(Entry(rel, st.st_size, cache.digest(src, st), mode, src=src))
    return entries
