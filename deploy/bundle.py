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
import threading
from dataclasses import dataclass
from pathlib import Path

import agent

from . import health, wheelhouse
from .errors import BuildError
from .health import Probe
from .inventory import App, Board
from .mmfile import check_mm
from .mmfile import is_simulated as is_simulated_mm
from .omfile import check_om, is_simulated
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
    probe: Probe | None = None  # the health check's image (None: the app has none to offer)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def manifest(self) -> list[list]:
        return [e.row() for e in self.entries]


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


def agent_source() -> Path:
    """The agent package shipped to boards: the one this host runs (one source of truth)."""
    return Path(agent.__file__).resolve().parent


class SimulatedModelNeeded(BuildError):
    """A sandbox Atlas board needs the simulated .om of ``onnx`` at ``path``, which is not built yet
    (or is out of date): ``deploy.models.simulated.ensure_simulated_om`` builds it."""

    def __init__(self, board: Board, target: Target, onnx: Path, path: Path | None):
        super().__init__(
            f"board {board.name} (sandbox, target {target.name}) runs a simulated .om of {onnx}, not built yet "
            "(or out of date): "
            f"set app.models.om to the output of `deploy model convert {onnx} --target {target.name} "
            "--aipp app --simulate`"
        )
        self.board, self.target, self.onnx, self.path = board, target, onnx, path


def model_for(app: App, target: Target, board: Board, state_dir: Path | None = None) -> Path:
    """The model file ``board`` runs: ``app.models.onnx`` or ``.om`` by its target's backend, checked.

    A sandbox board with an Ascend target runs the simulated runtime, which loads only simulated
    models: app.models.om when it is one, else the simulated conversion of app.models.onnx kept under
    ``state_dir`` (:func:`simulated_om_path`). When that is missing or out of date (or no ``state_dir``
    is given), SimulatedModelNeeded tells the caller to build it. BuildError (one line) for a missing
    model, a simulated model for a real board, or an .om that is corrupt or truncated.
    """
    if target.refuses:
        raise BuildError(f"board {board.name} (target {target.name}): {target.refuses}")
    kind = target.model_kind
    model = app.models.get(kind)
    onnx = app.models.get("onnx")
    simulated = {"om": is_simulated, "magicmind": is_simulated_mm}.get(kind)
    if simulated and board.sandbox and not simulated(model) and onnx is not None and onnx.is_file():
        return _simulated_om(app, target, board, onnx, state_dir)
    if model is None:
        hint = " (convert one with `deploy model convert`)" if kind == "om" else ""
        raise BuildError(
            f"board {board.name} (target {target.name}, backend {target.backend}) needs an .{kind} model "
            f"but app.models.{kind} is not set in the inventory{hint}"
        )
    if not model.is_file():
        hint = " (run `deploy model demo` to build the demo model)" if kind == "onnx" else ""
        raise BuildError(f"model for board {board.name} not found: {model}{hint}")
    if kind == "om":
        check_om(model, board)
    elif kind == "magicmind":
        check_mm(model, board, target)
    return model


def simulated_om_path(state_dir: Path, onnx: Path, target: Target) -> Path:
    """Where the simulated .om of ``onnx`` for ``target``'s chip is kept: ``.deploy/models/<stem>.<soc>.om``."""
    if target.model_kind == "magicmind":  # a MagicMind model (no fixed extension; .mm here)
        return state_dir / "models" / f"{onnx.stem}.{target.mm_arch}.mm"
    return state_dir / "models" / f"{onnx.stem}.{target.soc_version}.om"


def simulated_om_stamp(path: Path) -> Path:
    """The JSON beside a cached simulated .om saying what it was built from (``<name>.om.json``)."""
    return path.with_name(path.name + ".json")


def simulated_om_source(app: App) -> dict:
    """What a cached simulated .om depends on that the core can see without hashing: the onnx file
    (path, size, mtime) and the app's preprocess (its AIPP) and batch. Stored in the stamp as "source"."""
    onnx = app.models["onnx"]
    st = onnx.stat()
    source = {"onnx": str(onnx), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
              "preprocess": app.preprocess, "batch": app.batch}  # fmt: skip
    return json.loads(json.dumps(source))  # as it reads back from the stamp (tuples become lists)


def _simulated_om(app: App, target: Target, board: Board, onnx: Path, state_dir: Path | None) -> Path:
    """The cached simulated .om of ``onnx`` when its stamp matches the app; else SimulatedModelNeeded."""
    path = simulated_om_path(state_dir, onnx, target) if state_dir is not None else None
    if path is None or not path.is_file() or _stamped_source(path) != simulated_om_source(app):
        raise SimulatedModelNeeded(board, target, onnx, path)
    if target.model_kind == "magicmind":
        check_mm(path, board, target)
    else:
        check_om(path, board)
    return path


def _stamped_source(path: Path) -> dict | None:
    try:
        stamp = json.loads(simulated_om_stamp(path).read_text())
    except (OSError, ValueError):
        return None
    return stamp.get("source") if isinstance(stamp, dict) else None


def build(
    app: App,
    board: Board,
    target: Target,
    python: str,
    cache: HashCache,
    *,
    site: Path | None = None,
    state_dir: Path | None = None,
) -> Bundle:
    """Plan one release for ``board``: every file with its digest, ``app.json``, and the release id.

    ``python`` is the board's CPython version ("3.7"). ``site`` is the unpacked wheel tree to ship
    (default: ``wheelhouse.site_for``, which downloads and caches the target's wheels on first use).
    ``state_dir`` (the project's ``.deploy``) is where a sandbox Atlas board's simulated .om is kept
    (see :func:`model_for`).
    The health check's probe and ``health/health.json`` come from :func:`deploy.health.probe_for`.
    Nothing is copied; digests come from ``cache``, which is saved. Raises BuildError when the
    target's model, the labels file, the images folder or app.health.probe is missing.
    """
    files = _tree_files("agent", agent_source(), (".py",))
    if site is None:
        site = wheelhouse.site_for(target, python)
    files += _tree_files("site", site)
    model = model_for(app, target, board, state_dir)
    files.append((f"models/{model.name}", model))
    config = _app_config(app, target, python, model)
    files += _app_data(app)
    probe = health.probe_for(app, cache, state_dir)  # with the host's own top-1 for it, cached
    if probe is not None:
        files.append((probe.path, probe.image))
    entries = _entries(files, cache)
    generated = {"app.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()}
    if probe is not None:
        generated[health.SPEC] = probe.spec()
    for path, data in generated.items():
        entries.append(Entry(path, len(data), hashlib.sha256(data).hexdigest(), 0o644, data=data))
    entries.sort(key=lambda e: e.path)
    cache.save()
    rid = hashlib.sha256(json.dumps([e.row() for e in entries]).encode()).hexdigest()[:12]
    return Bundle(release_id=rid, target=target, python=python, entries=tuple(entries), app_config=config,
                  probe=probe)


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
        # the acl backend's options (async mode...); other backends take none
        "backend_options": app.backend_options if target.backend == "acl" else _mm_options(app, target),
    }


def _mm_options(app: App, target: Target) -> dict:
    """The magicmind backend's options (the MLU device id) from app.backend_options; others take none."""
    if target.backend != "magicmind":
        return {}
    return {k: v for k, v in app.backend_options.items() if k == "device"}


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
