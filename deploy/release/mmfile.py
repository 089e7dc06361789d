"""What a MagicMind model file is, read from its first bytes: one of the simulated builder's (its
header says arch and precision) or anything else (a real MagicMind model, whose format is not public,
or a file that is no model), and whether a board of a target may load it.

Checked on the host before a push, so a wrong model is one line here instead of a failed
``deserialize_from_file`` on the board after the transfer.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from ..errors import BuildError
from ..inventory import Board
from ..targets import Target
from .omfile import starts_with

# MAGIC of deploy/sandbox/cambricon/runtime/magicmind/python/runtime/simmm.py, then uint32 format
# version and uint32 header length, the JSON header and the ONNX graph. Repeated here because the core
# never imports the sandbox; tests/test_magicmind_sim.py checks that the two agree.
SIMULATED_MM_MAGIC = b"CAMSIMMM"
_PREFIX = struct.Struct("<8sII")


def is_simulated(model: Path | None) -> bool:
    """True when ``model`` is a readable file that starts with the simulated-model magic."""
    return starts_with(model, SIMULATED_MM_MAGIC)


def header(model: Path) -> dict | None:
    """The simulated model's JSON header, or None when ``model`` is not one (or is unreadable/corrupt)."""
    try:
        with open(model, "rb") as f:
            prefix = f.read(_PREFIX.size)
            if len(prefix) < _PREFIX.size:
                return None
            magic, _, size = _PREFIX.unpack(prefix)
            if magic != SIMULATED_MM_MAGIC:
                return None
            data = json.loads(f.read(size).decode("utf-8"))
            data["_file_size"] = os.fstat(f.fileno()).st_size
            data["_graph_at"] = _PREFIX.size + size
    except (OSError, ValueError, struct.error):
        return None
    return data if isinstance(data, dict) else None


def check_mm(model: Path, board: Board, target: Target) -> None:
    """BuildError (one line) unless ``board`` may load ``model``: a simulated model only on a sandbox
    board, intact, built for the target's arch and in one of its precision modes."""
    try:
        size = model.stat().st_size
    except OSError as exc:
        raise BuildError(
            f"model for board {board.name}: cannot read {model}: {exc.strerror or exc}"
        ) from None
    if not is_simulated(model):
        if board.sandbox:
            raise BuildError(
                f"board {board.name} is a sandbox board: its simulated MagicMind runtime loads only models of the "
                f"simulated builder, and {model} is not one (build it with `deploy model convert ONNX --target "
                f"{target.name} --simulate`)"
            )
        if size == 0:
            raise BuildError(f"model for board {board.name}: {model} is empty, not a MagicMind model")
        return  # a real MagicMind model: its format is not public, the board's runtime judges it
    if not board.sandbox:
        raise BuildError(
            f"board {board.name}: {model} is a simulated model from `deploy model convert --simulate`; "
            "a real MLU host needs a model from the MagicMind SDK's builder"
        )
    head = header(model)
    if head is None:
        raise BuildError(f"model for board {board.name}: {model} has a corrupt simulated-model header")
    if head["_file_size"] != head["_graph_at"] + int(head.get("onnx_size", -1)):
        raise BuildError(f"model for board {board.name}: {model} is truncated")
    archs = head.get("archs") or []
    if target.mm_arch and target.mm_arch not in archs:
        raise BuildError(
            f"board {board.name}: {model} is built for {','.join(archs) or 'no arch'}, "
            f"target {target.name} is {target.mm_arch}"
        )
    precision = head.get("precision")
    if target.precisions and precision not in target.precisions:
        raise BuildError(
            f"board {board.name}: {model} is built in precision {precision}; target {target.name} runs "
            f"{', '.join(target.precisions)}"
        )
