"""``deploy run | stop | pull``: runs on boards, followed live, and their outputs brought home."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from . import render, ui
from .boards import each_board, inventory, run_exit, worst


def cmd_run(args) -> int:
    from ..ops import runs

    images = Path(args.images).resolve() if args.images else None
    sizes = args.batch or []
    if len(sizes) > 1 and args.mode != "bench":
        raise UsageError("several batch sizes (--batch 1,4,8) go with --mode bench")
    overrides = {k: v for k, v in (("batch", sizes[0] if sizes else None), ("topk", args.topk)) if v}
    if len(sizes) > 1:
        overrides["bench"] = {"batch_sizes": sizes}

    single = len(inventory(args).select(args.target)) == 1  # per-image lines only for one board

    def action(inv, board, conn, prog):
        task = prog.add_task(f"{board.name}: starting", total=None, rate="")
        on_event = run_events(prog, task, board, echo=None if args.json or args.quiet else ("one" if single else "many"))
        try:
            if args.attach:
                res = runs.attach(inv, board, conn, args.attach, on_event=on_event)
            else:
                res = runs.run(inv, board, conn, images=images, run_id=args.resume or args.run_id,
                               resume=bool(args.resume), mode=args.mode, overrides=overrides, on_event=on_event)
        finally:
            prog.remove_task(task)  # the board's summary line takes the row's place
        if not args.json:
            render.print_run(ui.out(), res)
        return render.run_json(res)

    return run_exit(each_board(args, action, view=lambda: ui.count_progress(False), exit_code=run_exit))


def run_events(prog, task, board, echo: str | None):
    """The live row of one board's run, from the agent's events. ``echo``: "one" (a single board: per-image
    lines, and an own app's output as it prints it), "many" (its output, each line with the board's name),
    None (nothing but the row)."""
    bench = []

    def on_event(ev):
        kind = ev["event"]
        if kind == "start":
            bench.append(ev.get("mode") == "bench")
            prog.update(task, description=f"{board.name}: {ui.escape(ev.get('run_id'))}", total=ev["total"] or None,
                        completed=ev.get("skipped", 0))
        elif kind == "log":
            if echo:  # the app's stdout on ours, its stderr on ours (through the live display on a terminal)
                con = ui.err() if ev.get("stream") == "stderr" else ui.out()
                con.print(render.log_line(None if echo == "one" else board.name, ev), highlight=False, soft_wrap=True)
        elif kind == "progress" and not ev.get("ips") and ev.get("total"):  # an own app's [n/N]
            prog.update(task, total=ev["total"], completed=ev["done"])
        elif kind == "progress" and bench and bench[0]:  # a bench counts loops, not images
            prog.update(task, completed=ev.get("done", 0), rate=f"{ev.get('ips', 0):.1f} it/s")
        elif kind in ("result", "error"):
            prog.advance(task)
            if echo == "one":
                ui.out().print(render.event_line(ev))
        elif kind == "progress" and ev.get("ips"):
            prog.update(task, rate=f"{ev['ips']:.1f} img/s")

    return on_event


def cmd_stop(args) -> int:
    from ..ops import runs

    def action(inv, board, conn, prog):
        info = runs.stop(inv, conn, args.run)
        if not args.json:
            what = f"stopped (pid {info.pid})" if info.stopped else "was not running"
            ui.out().print(f"{board.name}: run {args.run} {what}; finished images are kept, resume with --resume {args.run}")
        return info.to_json()

    return worst(each_board(args, action))


def cmd_pull(args) -> int:
    from ..ops import outputs

    def action(inv, board, conn, prog):
        task = prog.add_task(f"{board.name}: pulling", total=None)
        try:
            res = outputs.pull(inv, board, conn, args.run, dest_root=Path(args.dest) if args.dest else None,
                               include_inputs=args.include_inputs, on_bytes=lambda n: prog.advance(task, n))
        finally:
            prog.remove_task(task)
        if not args.json:
            render.print_pull(ui.out(), res)
        return render.pull_json(res)

    return worst(each_board(args, action, view=lambda: ui.transfer_progress(False)))
