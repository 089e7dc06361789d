"""``deploy check | push | releases | rollback | status | exec``: the release on each board and what runs it."""

from __future__ import annotations

import sys

from ..errors import DeployError, RemoteError, RolloutHeld
from . import render, ui
from .boards import each_board, inventory, worst


def cmd_check(args) -> int:
    from ..ops import facts as facts_mod

    def action(inv, board, conn, prog):
        facts, findings = facts_mod.check(inv, board, conn)
        bad = [f for f in findings if not f.ok and f.severity == "error"]
        if not args.json:
            t = ui.table("check", "result", "detail", title=f"{board.name} (target {board.target})")
            for f in findings:
                mark = "[green]ok[/]" if f.ok else ("[yellow]warn[/]" if f.severity == "warning" else "[red]FAIL[/]")
                t.add_row(f.check, mark, ui.escape(f.detail))
            ui.out().print(t)
        return {"ok": not bad, "target": board.target, "facts": facts.to_json(), "findings": [f.__dict__ for f in findings]}

    return worst(each_board(args, action))


def cmd_push(args) -> int:
    from .. import fleet
    from ..ops import push as push_mod
    from ..release.bundle import HashCache

    cache = HashCache(inventory(args).state_dir / "hashcache.json")  # shared by the boards (thread-safe)

    def action(inv, board, conn, prog):
        task = prog.add_task(f"{board.name}: planning", total=None)

        def on_plan(plan):
            prog.update(task, description=f"{board.name}: sending {plan.send_files} files", total=plan.send_bytes)
            if args.dry_run and not args.json:
                render.print_plan(ui.err(), plan)

        try:
            res = push_mod.push(inv, board, conn, dry_run=args.dry_run, on_plan=on_plan,
                                on_bytes=lambda n: prog.advance(task, n), cache=cache,
                                health_check=not args.no_health_check, compress=args.compress,
                                on_phase=lambda phase: prog.update(task, description=f"{board.name}: {phase}"),
                                built=built.get(board.name), gate=fleet.turn())
        except RolloutHeld as exc:  # staged while an earlier stage checked, which failed: as if never started
            ui.error_line(str(exc), prefix="skipped ")
            return {"ok": False, "skipped": True, "held": True, "error": str(exc), "exit_code": exc.exit_code}
        finally:
            prog.remove_task(task)
        if not args.json:
            render.print_push(ui.out(), res)
        return render.push_json(res)

    checked = []
    built: dict = {}

    def prepare(inv, board):  # plan before acting: the model variant this board needs must exist
        from ..release.bundle import check_local
        from .tools import build_app, prepare_model  # a sandbox Atlas board's simulated .om, built once

        if not checked:  # the app's own tree and requirements: once, whatever the number of boards
            check_local(inv.app)
            checked.append(True)
        prepare_model(inv, board)
        built[board.name] = build_app(inv, board, cache)  # a C/C++ app: built (cached) before any board is touched

    rollout = fleet.Rollout(forks=args.forks or fleet.DEFAULT_FORKS, canary=args.canary or 0, batch=args.batch,
                            serial=args.serial, max_fail=args.max_fail, overlap=not args.no_overlap)
    return worst(each_board(args, action, prepare, view=lambda: ui.transfer_progress(False), rollout=rollout))


def cmd_releases(args) -> int:
    from ..ops import releases

    def action(inv, board, conn, prog):
        info = releases.releases(inv, conn)
        if not args.json:
            render.print_releases(ui.out(), board.name, info)
        return {"ok": True, **info.to_json()}

    return worst(each_board(args, action))


def cmd_rollback(args) -> int:
    from ..ops import releases

    def action(inv, board, conn, prog):
        info = releases.rollback(inv, conn, args.to)
        if not args.json:
            ui.out().print(f"{board.name}: current {ui.escape(info.previous)} -> [bold]{ui.escape(info.current)}[/]")
        return info.to_json()

    return worst(each_board(args, action))



def cmd_status(args) -> int:
    from ..ops import outputs

    def action(inv, board, conn, prog):
        info = outputs.status(inv, conn)
        if not args.json:
            render.print_status(ui.out(), board.name, info)
        return {"ok": True, **info.to_json()}

    return worst(each_board(args, action))


EXEC_JSON_MAX = 64 << 20


def cmd_exec(args) -> int:
    """Stream the command's output (or, with --json, collect it per board); exit with the worst status."""
    from ..link.remote import user_command

    argv = list(args.command)
    # argparse's REMAINDER also swallows our own flags written after the board: take them up to `--`
    while argv and argv[0] in ("--json", "--accept-new-host-key", "--no-persist"):
        setattr(args, argv.pop(0)[2:].replace("-", "_"), True)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise DeployError("nothing to run: deploy exec BOARD -- CMD [ARGS...]")

    def action(inv, board, conn, prog):
        own = inv.app.own
        chan = conn.channel(user_command(inv.app.name, argv, f"app/{own.workdir}" if own else None))
        chan.shutdown_write()
        stdout, stderr = chan.makefile("rb"), chan.makefile_stderr("rb")
        if args.json:  # held in memory for the JSON document: capped
            o, e = stdout.read(EXEC_JSON_MAX + 1), stderr.read(EXEC_JSON_MAX + 1)
            if max(len(o), len(e)) > EXEC_JSON_MAX:
                chan.close()
                raise RemoteError(f"{board.name}: more than {EXEC_JSON_MAX >> 20} MiB of output; run it without --json")
            code = chan.recv_exit_status()
            return {"ok": code == 0, "exit_code": code, "stdout": o.decode("utf-8", "replace"),
                    "stderr": e.decode("utf-8", "replace")}
        tag = f"{board.name}: ".encode() if many else b""  # several boards at once: each line says whose
        for line in iter(lambda: stdout.readline(1 << 20), b""):  # passed through as ssh would, a MiB at most
            with out_lock:
                sys.stdout.buffer.write(tag + line)
                sys.stdout.buffer.flush()
        err = stderr.read(EXEC_JSON_MAX)  # the first 64 MiB: what a terminal can show of it
        with out_lock:
            sys.stderr.buffer.write(b"".join(tag + ln for ln in err.splitlines(keepends=True)))
        code = chan.recv_exit_status()
        return {"ok": code == 0, "exit_code": code}

    import threading

    out_lock = threading.Lock()
    many = len(inventory(args).select(args.target)) > 1
    return worst(each_board(args, action))  # a failed row's code is the command's own exit status


def cmd_build(args) -> int:
    """``deploy build``: each selected board's build of the app (cached), without touching any board."""
    from ..errors import DeployError, UsageError
    from ..release.hashcache import HashCache
    from .boards import error_row
    from .tools import build_app, toolchain_for

    inv = inventory(args)
    own = inv.app.own
    if own is None or own.build is None:
        raise UsageError("the app has no app.build: there is nothing to build on the host")
    cache = HashCache(inv.state_dir / "hashcache.json")
    rows = []
    for board in inv.select(args.target):
        try:
            with ui.status(f"{board.name}: building"):
                tc = toolchain_for(inv, board)
                built = build_app(inv, board, cache)
        except DeployError as exc:
            rows.append(error_row(board, exc))
            continue
        rows.append({"board": board.name, "ok": True, "arch": tc.arch, "path": str(built.root),
                     "artifacts": list(built.artifacts), "cached": built.cached, "seconds": round(built.seconds, 3),
                     "toolchain": tc.describe})
        if not args.json:
            what = "cached" if built.cached else f"built in {built.seconds:.1f}s"
            ui.out().print(f"[bold]{ui.escape(board.name)}[/]: {', '.join(built.artifacts)} for {tc.arch} ({what}) in "
                           f"{ui.escape(str(built.root))}; {ui.escape(tc.describe)}", soft_wrap=True)
    code = worst(rows)
    if args.json:
        ui.emit_json({"command": "build", "boards": rows, "exit_code": code})
    return code
