"""Dispatch one board operation: read its typed request, run it, turn failures into one error line.

Python 3.7 + stdlib only. ``run(op, wire)`` is what the bootstrap calls on the board and what
tests call on a temporary directory.
"""

import tarfile

from . import protocol
from .facts import op_facts
from .releases import op_push, op_releases, op_rollback, op_verify
from .runs import op_attach, op_pull, op_run, op_status, op_stop
from .wire import Fail

HANDLERS = {
    "facts": op_facts,
    "push": op_push,
    "releases": op_releases,
    "rollback": op_rollback,
    "verify": op_verify,
    "run": op_run,
    "attach": op_attach,
    "stop": op_stop,
    "pull": op_pull,
    "status": op_status,
}


def run(op, wire):
    """Run operation ``op`` on ``wire``; returns the process exit status (0 ok, 1 failed, 2 unknown op)."""
    if op not in HANDLERS:
        wire.reply({"error": f"unknown operation {op!r}"})
        return 2
    try:
        HANDLERS[op](wire, wire.read(protocol.OPERATIONS[op][0]))
    except Fail as exc:
        wire.reply({"error": str(exc)})
        return 1
    except (tarfile.TarError, EOFError) as exc:
        wire.reply({"error": f"transfer interrupted: {exc}"})
        return 1
    except OSError as exc:
        wire.reply({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0
