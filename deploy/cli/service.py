"""``deploy service start|status|stop|logs`` and ``deploy collect``: the agent as a supervised service
(the operations are ``deploy/ops/service.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import DeployError
from ..ops import service
from . import render, ui
from .boards import connect, each_board, inventory, worst


def _healthy(info) -> bool:
    """A started service is healthy when its agent runs and its supervisor is not giving up."""
    return info.enabled and info.agent_pid is not None and info.supervisor not in ("crash-loop", "dead")


def cmd_service(args) -> int:
    if args.action == "logs":
        inv = inventory(args)
        boards = inv.select(args.target)
        if len(boards) != 1:
            raise DeployError("deploy service logs takes one board")
        with connect(inv, boards[0], args) as conn:
            try:
                service.logs(inv, conn, lines=args.lines, follow=args.follow, out=_VisibleLines())
            except KeyboardInterrupt:
                pass
        return 0

    doing = {"start": "starting the service (the agent loads its model)", "stop": "stopping the service",
             "status": "asking"}

    def action(inv, board, conn, prog):
        task = prog.add_task(f"{board.name}: {doing[args.action]}", total=None)
        try:
            if args.action == "start":
                info = service.start(inv, conn, inbox=args.inbox, method=args.method)
            elif args.action == "stop":
                info = service.stop(inv, conn)
            else:
                info = service.status(inv, conn)
        finally:
            prog.remove_task(task)
        if not args.json:
            ui.out().print(f"[bold]{ui.escape(board.name)}[/]: {ui.escape(render.service_line(info))}", soft_wrap=True)
        ok = True if args.action == "stop" else (_healthy(info) if args.action == "start" else True)
        return {"ok": ok, "service": info.to_json()}

    return worst(each_board(args, action, view=ui.spinner_progress if args.action != "status" else None))


class _VisibleLines:
    """The agent's log on stdout as text, each line through ``ui.visible`` (image names come from the inbox)."""

    def write(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        sys.stdout.write(ui.visible(text.removesuffix("\n")) + ("\n" if text.endswith("\n") else ""))

    def flush(self) -> None:
        sys.stdout.flush()


def cmd_collect(args) -> int:
    dest = Path(args.dest) if args.dest else None

    def action(inv, board, conn, prog):
        task = prog.add_task(f"{board.name}: collecting", total=None)
        try:
            res = service.collect(inv, board, conn, dest, on_bytes=lambda n: prog.advance(task, n))
        finally:
            prog.remove_task(task)
        if not args.json:
            what = (f"records {res.first}..{res.last} ({res.records}, {res.bytes / 1e6:.1f} MB, "
                    f"{res.rate:,.0f} records/s)" if res.records else f"nothing new (last {res.last})")
            extra = f"; {res.missing} older records were collected before and are gone from the board" if res.missing else ""
            ui.out().print(f"[bold]{ui.escape(board.name)}[/]: {what} -> {ui.escape(str(res.path))}{extra}", soft_wrap=True)
        return {"ok": True, **res.to_json()}

    return worst(each_board(args, action, view=lambda: ui.transfer_progress(False)))
