"""Dispatch one board operation: read its typed request, run it, turn failures into one error line.

Python 3.7 + stdlib only. ``run(op, wire)`` is what the bootstrap calls on the board and what
tests call on a temporary directory.
"""

import importlib
import sys

from . import protocol
from .wire import Fail

#: op -> module of this package that implements it as ``op_<name>``; imported on use, since every
#: operation is a fresh interpreter on the board and most need only a fraction of the code
HANDLERS = {
    "facts": "facts",
    "push": "push",
    "releases": "releases",
    "rollback": "releases",
    "verify": "releases",
    "run": "runs",
    "attach": "runs",
    "stop": "runs",
    "pull": "outputs",
    "status": "outputs",
    "health": "health",
    "service": "service",
    "collect": "service",
    "logs": "service",
}


def run(op, wire):
    """Run operation ``op`` on ``wire``; returns the process exit status (0 ok, 1 failed, 2 unknown op)."""
    if op not in HANDLERS:
        wire.reply({"error": f"unknown operation {op!r}"})
        return 2
    try:
        handler = getattr(importlib.import_module("." + HANDLERS[op], __package__), "op_" + op)
        handler(wire, wire.read(protocol.OPERATIONS[op][0]))
    except Fail as exc:
        wire.reply({"error": str(exc)})
        return 1
    except Exception as exc:
        if _interrupted(exc):
            wire.reply({"error": f"transfer interrupted: {exc}"})
        elif isinstance(exc, OSError):
            wire.reply({"error": f"{type(exc).__name__}: {exc}"})
        else:
            raise
        return 1
    return 0


def _interrupted(exc):
    """A stream that ended early: EOF, or a tar error (tarfile is only loaded by the ops that stream)."""
    tarfile = sys.modules.get("tarfile")
    return isinstance(exc, EOFError) or (tarfile is not None and isinstance(exc, tarfile.TarError))
