"""What an ``.om`` file is, read from its first bytes: a real one (atc's GE header) or a simulated one
(``deploy model convert --simulate``), intact or truncated, and whether a board can load it.

Checked on the host before a push, so a bad model is one line here instead of a load failure on the
board after the transfer. Only headers are read (256 bytes, plus the simulated model's JSON header).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from ..errors import BuildError
from ..inventory import Board

# A simulated model (``deploy model convert --simulate``; only the simulated runtime of sandbox boards
# loads it) starts with MAGIC of deploy/sandbox/ascend/runtime/acl/simom.py, then uint32 format version
# and uint32 header length, the JSON header (with "onnx_size") and the ONNX graph. Repeated here because
# the core never imports the sandbox; tests/test_simulated_om.py checks that the two agree.
SIMULATED_OM_MAGIC = b"ATLSIMOM"
_SIMULATED_PREFIX = struct.Struct("<8sII")
# A real .om starts with GE's 256-byte ModelFileHeader: uint32 magic 0x444F4D49 ("IMOD" on disk), ...,
# uint32 length at offset 76 = the bytes after the header (CANN inc/framework/executor/c/types.h);
# the runtime refuses a file shorter than that.
OM_MAGIC = b"IMOD"
OM_HEADER_LEN = 256
_OM_LENGTH = struct.Struct("<I")
_OM_LENGTH_AT = 76


def starts_with(model: Path | None, magic: bytes) -> bool:
    """True when ``model`` is a readable file that starts with ``magic`` (a simulated .om or MagicMind model)."""
    if model is None:
        return False
    try:
        with open(model, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def is_simulated(model: Path | None) -> bool:
    """True when ``model`` is a readable file that starts with the simulated-model magic."""
    return starts_with(model, SIMULATED_OM_MAGIC)


def check_om(model: Path, board: Board) -> None:
    """BuildError (one line) unless ``model`` is an .om ``board`` can load: a real one for a real board
    (a simulated one for a sandbox board), with all the bytes its header announces."""
    try:
        with open(model, "rb") as f:
            head, size = f.read(OM_HEADER_LEN), os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise BuildError(
            f"model for board {board.name}: cannot read {model}: {exc.strerror or exc}"
        ) from None
    if head.startswith(SIMULATED_OM_MAGIC):
        if not board.sandbox:
            raise BuildError(
                f"board {board.name}: {model} is a simulated model from `deploy model convert --simulate`; "
                "a real board needs a model from the CANN atc"
            )
        problem = _simulated_om_problem(model, head, size)
    elif head.startswith(OM_MAGIC):
        if board.sandbox:
            raise BuildError(
                f"board {board.name} is a sandbox board: its simulated runtime cannot load the real .om {model} "
                "(give app.models.onnx, or an .om from `deploy model convert --simulate`)"
            )
        problem = _om_problem(head, size)
    else:
        problem = "is not an Ascend offline model (it starts with neither atc's header nor the simulator's)"
    if problem:
        raise BuildError(f"model for board {board.name}: {model} {problem}")


def _om_problem(head: bytes, size: int) -> str | None:
    """Why a real .om is unusable (truncated), or None."""
    if size < OM_HEADER_LEN:
        return f"is truncated: {size} bytes, shorter than the {OM_HEADER_LEN}-byte .om header"
    (length,) = _OM_LENGTH.unpack_from(head, _OM_LENGTH_AT)
    if size < OM_HEADER_LEN + length:
        return f"is truncated: {size} bytes, its header announces {OM_HEADER_LEN + length}"
    return None


def _simulated_om_problem(model: Path, head: bytes, size: int) -> str | None:
    """Why a simulated .om is unusable (truncated, corrupt header), or None; reads only its header."""
    rebuild = "; rebuild it with `deploy model convert --simulate`"
    if size < _SIMULATED_PREFIX.size:
        return f"is a truncated simulated model ({size} bytes){rebuild}"
    _, _, length = _SIMULATED_PREFIX.unpack_from(head)
    end = _SIMULATED_PREFIX.size + length
    if size < end:
        return f"is a truncated simulated model (its header is cut off){rebuild}"
    try:
        with open(model, "rb") as f:
            f.seek(_SIMULATED_PREFIX.size)
            graph = int(json.loads(f.read(length).decode("utf-8"))["onnx_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"is a corrupt simulated model (unreadable header){rebuild}"
    if size != end + graph:
        return f"is a truncated simulated model ({size} bytes, its header announces {end + graph}){rebuild}"
    return None
