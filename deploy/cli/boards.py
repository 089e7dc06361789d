"""The per-board frame every board command runs in: select boards, connect, fan out, render the recap.

A command says only what happens on one board (``action(inv, board, conn, prog) -> row``);
:func:`each_board` checks everything local first (``prepare``), opens one verified connection per
board, runs the actions through the fleet engine (``deploy/fleet.py``) with one live display the
boards share, and prints the recap (or, with ``--json``, the one JSON object).

Exit codes: 0 everything asked for succeeded; 1 an operation failed; 2 bad inventory or
usage; 3 host-key refusal; 4 board unreachable; 5 a run finished partially (some images
failed). User mistakes print one line, never a traceback.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from .. import fleet
from .. import inventory as inventory_mod
from ..errors import DeployError
from . import render, ui

EXIT_PARTIAL = 5


def inventory(args) -> inventory_mod.Inventory:
    """The inventory, read once per command (a command may ask for it before and inside the fan-out)."""
    inv = getattr(args, "_inventory", None)
    if inv is None:
        inv = args._inventory = inventory_mod.load(args.inventory)
    return inv


@contextmanager
def connect(inv, board, args):
    """One verified connection to ``board`` for the whole action (warm: over the project's master, ``link/warm.py``);
    always closed."""
    from ..link import warm

    persist = warm.persist_for(board, getattr(args, "no_persist", False))
    conn = warm.connect(inv, board, accept_new=getattr(args, "accept_new_host_key", False), persist=persist)
    try:
        conn.start()  # the handshake overlaps with whatever the command plans first (e.g. the bundle)
        yield conn
    finally:
        conn.close()


def each_board(args, action, prepare=None, view=None, rollout=None, exit_code=None) -> list[dict]:
    """Run ``action(inv, board, conn, prog) -> row`` on every selected board, in parallel (``fleet.py``).

    ``prepare(inv, board)`` runs for every board first, one after another, before any board is
    contacted (plan, then act: a missing model fails without touching a board). ``view()`` makes
    the one live display the boards share, a row each (``prog``; silent without ``view`` or
    with ``--json``). A board that fails gives an error row and the others go on; rows go to
    stdout as JSON with ``--json``, else a recap table follows when there was more than one
    board. Every row has "board" and "ok"; a failed one has "error" and "exit_code".

    ``--json`` prints one object: ``{"command", "boards": [rows], "recap": {counts}, "exit_code"}``,
    where ``exit_code`` is what the process exits with (``exit_code(rows)``, default :func:`worst`).
    """
    inv = inventory(args)
    boards = inv.select(args.target)
    rollout = rollout or fleet.Rollout(forks=getattr(args, "forks", None) or fleet.DEFAULT_FORKS)
    fleet.validate(len(boards), rollout)
    early = prepare_all(inv, boards, prepare)
    with (view() if view and not args.json else ui.no_progress()) as prog:

        def work(board) -> dict:
            if board.name in early:
                return early[board.name]
            t0 = time.monotonic()
            try:
                with connect(inv, board, args) as conn:
                    row = {"board": board.name, **action(inv, board, conn, prog)}
            except DeployError as exc:
                row = error_row(board, exc)
            row.setdefault("seconds", round(time.monotonic() - t0, 3))
            return row

        rows = fleet.run(boards, work, rollout)
    if args.json:
        ui.emit_json({"command": args.cmd, "boards": rows, "recap": fleet.recap(rows, args.cmd),
                      "exit_code": (exit_code or worst)(rows)})
    elif len(boards) > 1:
        render.print_recap(ui.out(), rows, args.cmd)
    return rows


def prepare_all(inv, boards, prepare) -> dict[str, dict]:
    """Local checks for every board before any is touched; the error rows of those that failed."""
    early: dict[str, dict] = {}
    for board in boards if prepare else ():
        try:
            prepare(inv, board)
        except DeployError as exc:
            early[board.name] = error_row(board, exc)
    return early


def error_row(board, exc: DeployError) -> dict:
    ui.error_line(str(exc), prefix="error ")
    return {"board": board.name, "ok": False, "error": str(exc), "exit_code": exc.exit_code}


def worst(rows: list[dict]) -> int:
    """0 if every board succeeded, else the highest documented code among the failed boards (1 at least)."""
    failed = [r for r in rows if not r["ok"]]
    return max((r.get("exit_code") or 1 for r in failed), default=0)


def run_exit(rows: list[dict]) -> int:
    """:func:`worst`, except 5 (partial) when every board that failed finished its run with some images classified
    and no reason to stop early (a run ended by a full disk, a signal or an error is 1: it did not finish)."""
    if all(r["ok"] for r in rows):
        return 0
    partial = all(r["ok"] or (r.get("ended") and r.get("images_ok") and not r.get("reason")) for r in rows)
    return EXIT_PARTIAL if partial else worst(rows)
