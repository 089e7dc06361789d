"""A compromised board for tests: the board-code cache in a sandbox board's home, tampered with.

The host says "cached" and the board runs whatever is in ``~/.cache/atlas-deploy/board/<sha>/``: replacing
``deploy_board/main.py`` there stands in for a board whose user account is someone else's, sending crafted
replies over a real sshd. ``handlers`` is Python source defining ``HANDLED = {op: function(wire) -> exit}``;
the other operations run the board's own code. ``restore`` puts the real main back.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

from deploy.link import remote

MAIN = '''\
import io, json, os, sys, tarfile, time
from . import main_real

{handlers}

def run(op, wire):
    if op in HANDLED:
        return HANDLED[op](wire) or 0
    return main_real.run(op, wire)
'''


def code_dir(project, board: str = "board1") -> Path:
    """The board's cached copy of the code the host sends (installed by one operation if it is not there)."""
    digest, _ = remote.code_archive()
    path = Path(project.status(board)["home"]) / ".cache" / "atlas-deploy" / "board" / digest / "deploy_board"
    if not path.is_dir():
        project.deploy("check", board, check=False)
    assert path.is_dir(), path
    return path


def _cold(project, board: str) -> None:
    """Close the board's warm connection: a standby interpreter the master keeps waiting there has loaded the
    code as it was (an attacker's change reaches the interpreters started after it, not those before)."""
    project.deploy("connections", "--close", board, check=False)


def compromise(project, handlers: str, board: str = "board1") -> None:
    _cold(project, board)
    path = code_dir(project, board)
    if not (path / "main_real.py").exists():
        shutil.copy2(path / "main.py", path / "main_real.py")
    (path / "main.py").write_text(MAIN.format(handlers=textwrap.dedent(handlers)))
    shutil.rmtree(path / "__pycache__", ignore_errors=True)


def restore(project, board: str = "board1") -> None:
    _cold(project, board)
    path = code_dir(project, board)
    if (path / "main_real.py").exists():
        shutil.copy2(path / "main_real.py", path / "main.py")
        (path / "main_real.py").unlink()
    shutil.rmtree(path / "__pycache__", ignore_errors=True)
