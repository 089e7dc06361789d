"""Which model file a board runs (its variant of ``app.models``), checked before anything is sent.

``.onnx`` for ONNX Runtime targets, ``.om`` for Ascend targets, a MagicMind model for Cambricon ones. A sandbox
board with a vendor target runs the simulated runtime, which loads only simulated models: the simulated
conversion of ``app.models.onnx`` is kept under ``.deploy/models/`` and built by the model tooling
(``deploy/models/simulated.py``) before any board is touched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import BuildError
from ..inventory import App, Board
from ..targets import Target
from .mmfile import check_mm
from .mmfile import is_simulated as is_simulated_mm
from .omfile import check_om, is_simulated


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


def dvpp_decode(app: App) -> bool:
    """Whether the app's acl backend decodes JPEGs on DVPP (``backend_options.decode: dvpp``): its .om then
    takes YUV420SP_U8 pictures (AIPP with CSC)."""
    return app.backend_options.get("decode") == "dvpp"


def simulated_om_path(state_dir: Path, onnx: Path, target: Target, yuv: bool = False) -> Path:
    """Where the simulated .om of ``onnx`` for ``target``'s chip is kept: ``.deploy/models/<stem>.<soc>.om``
    (``<stem>.<soc>.yuv.om`` with a YUV420SP_U8 AIPP input, for decode: dvpp)."""
    if target.model_kind == "magicmind":  # a MagicMind model (no fixed extension; .mm here)
        return state_dir / "models" / f"{onnx.stem}.{target.mm_arch}.mm"
    return state_dir / "models" / f"{onnx.stem}.{target.soc_version}{'.yuv' if yuv else ''}.om"


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
    if dvpp_decode(app):
        source["decode"] = "dvpp"
    return json.loads(json.dumps(source))  # as it reads back from the stamp (tuples become lists)


def _simulated_om(app: App, target: Target, board: Board, onnx: Path, state_dir: Path | None) -> Path:
    """The cached simulated .om of ``onnx`` when its stamp matches the app; else SimulatedModelNeeded."""
    yuv = dvpp_decode(app) and target.model_kind == "om"
    path = simulated_om_path(state_dir, onnx, target, yuv) if state_dir is not None else None
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


def cached_build(out: Path, app: App, key: str, argv: list[str], build: Callable[[], object]) -> Path:
    """``out`` built by ``build()`` unless the stamp beside it has the same build ``key``; the stamp then
    records the key, the source :func:`model_for` checks without hashing, and the command line."""
    path = simulated_om_stamp(out)
    stamp = {"key": key, "source": simulated_om_source(app), "argv": argv}
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    old = old if isinstance(old, dict) else {}
    if not (out.is_file() and old.get("key") == key):
        build()
    if old != stamp:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return out
