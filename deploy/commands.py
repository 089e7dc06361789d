"""What each ``deploy`` command does: select boards, call the core, render (rich on stderr, tables or
``--json`` on stdout). Imported by ``cli.main`` only after the arguments parsed, so ``--help`` and
usage errors never pay for rich, yaml or paramiko.

Exit codes: 0 everything asked for succeeded; 1 an operation failed; 2 bad inventory or
usage; 3 host-key refusal; 4 board unreachable; 5 a run finished partially (some images
failed). User mistakes print one line, never a traceback.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

from . import inventory as inventory_mod
from . import report, ui
from .errors import DeployError, UsageError

EXIT_PARTIAL = 5



def _inv(args) -> inventory_mod.Inventory:
    """The inventory, read once per command (a command may ask for it before and inside the fan-out)."""
    inv = getattr(args, "_inventory", None)
    if inv is None:
        inv = args._inventory = inventory_mod.load(args.inventory)
    return inv


@contextmanager
def _connect(inv, board, args):
    from .ssh import Connection, endpoint_for

    conn = Connection(endpoint_for(inv, board), accept_new=getattr(args, "accept_new_host_key", False))
    try:
        conn.start()  # the handshake overlaps with whatever the command plans first (e.g. the bundle)
        yield conn
    finally:
        conn.close()


def _emit_json(obj) -> None:
    ui.emit_json(obj)


# ---------------------------------------------------------------- sandbox


def cmd_sandbox(args) -> int:
    from . import sandbox

    inv = _inv(args)
    if args.action == "up":
        with ui.status("starting sandbox boards") as status:
            boxes = sandbox.up(inv, args.names or None, log=lambda line: status.update(ui.escape(line[-100:])))
        if args.json:
            _emit_json([b.to_json() for b in boxes])
        else:
            for b in boxes:
                ui.out().print(f"[green]up[/] {b.name}: {b.user}@{b.host}:{b.port} home {b.home} (pid {b.pid})")
        return 0
    if args.action == "reboot":
        return _sandbox_reboot(args, inv)
    if args.action == "down":
        boxes = sandbox.down(inv, args.names or None, purge=args.purge)
        if args.json:
            _emit_json([b.to_json() for b in boxes])
        else:
            for b in boxes:
                ui.out().print(f"[yellow]down[/] {b.name}" + (" (purged)" if args.purge else ""))
        return 0
    boxes = sandbox.status(inv)
    if args.json:
        _emit_json([b.to_json() for b in boxes])
        return 0
    t = ui.table("board", "state", "address", "user", "home", "pid")
    for b in boxes:
        t.add_row(b.name, "[green]running[/]" if b.running else "[red]stopped[/]", f"{b.host}:{b.port}", b.user, b.home,
                  str(b.pid or "-"))
    ui.out().print(t)
    for b in boxes:
        if b.running:
            ui.out().print(f"{b.name}: {b.ssh_command}")
    return 0


def _sandbox_reboot(args, inv) -> int:
    """``deploy sandbox reboot``: SIMULATED (sandbox/cron.py): the board's processes killed, @reboot lines run."""
    from . import sandbox
    from .errors import SandboxError
    from .sandbox import cron

    done = []
    for board in sandbox.boards(inv, args.names or None):
        sb = sandbox.load(inv, board.name)
        if sb is None or not sb.running:
            raise SandboxError(f"{board.name}: sandbox board is not up (deploy sandbox up {board.name})")
        done.append(cron.reboot(sb))
    if args.json:
        _emit_json([r.to_json() for r in done])
    else:
        for r in done:
            ui.out().print(f"[yellow]rebooted (simulated)[/] {r.board}: killed {len(r.killed)} process(es), "
                           f"ran {len(r.started)} @reboot entr{'y' if len(r.started) == 1 else 'ies'}")
    return 0


# ---------------------------------------------------------------- per-board commands


def _each_board(args, action, prepare=None, view=None, rollout=None, exit_code=None) -> list[dict]:
    """Run ``action(inv, board, conn, prog) -> row`` on every selected board, in parallel (``fleet.py``).

    ``prepare(inv, board)`` runs for every board first, one after another, before any board is
    contacted (plan, then act: a missing model fails without touching a board). ``view()`` makes
    the one live display the boards share, a row each (``prog``; silent without ``view`` or
    with ``--json``). A board that fails gives an error row and the others go on; rows go to
    stdout as JSON with ``--json``, else a recap table follows when there was more than one
    board. Every row has "board" and "ok"; a failed one has "error" and "exit_code".

    ``--json`` prints one object: ``{"command", "boards": [rows], "recap": {counts}, "exit_code"}``,
    where ``exit_code`` is what the process exits with (``exit_code(rows)``, default ``_exit``).
    """
    from . import fleet

    inv = _inv(args)
    boards = inv.select(args.target)
    rollout = rollout or fleet.Rollout(forks=getattr(args, "forks", None) or fleet.DEFAULT_FORKS)
    fleet.validate(len(boards), rollout)
    early = _prepare_all(inv, boards, prepare)
    with (view() if view and not args.json else ui.no_progress()) as prog:

        def work(board) -> dict:
            if board.name in early:
                return early[board.name]
            t0 = time.monotonic()
            try:
                with _connect(inv, board, args) as conn:
                    row = {"board": board.name, **action(inv, board, conn, prog)}
            except DeployError as exc:
                row = _error_row(board, exc)
            row.setdefault("seconds", round(time.monotonic() - t0, 3))
            return row

        rows = fleet.run(boards, work, rollout)
    if args.json:
        _emit_json({"command": args.cmd, "boards": rows, "recap": fleet.recap(rows, args.cmd),
                    "exit_code": (exit_code or _exit)(rows)})
    elif len(boards) > 1:
        report.print_recap(ui.out(), rows, args.cmd)
    return rows


def _prepare_all(inv, boards, prepare) -> dict[str, dict]:
    """Local checks for every board before any is touched; the error rows of those that failed."""
    early: dict[str, dict] = {}
    for board in boards if prepare else ():
        try:
            prepare(inv, board)
        except DeployError as exc:
            early[board.name] = _error_row(board, exc)
    return early


def _error_row(board, exc: DeployError) -> dict:
    ui.error_line(str(exc), prefix="error ")
    return {"board": board.name, "ok": False, "error": str(exc), "exit_code": exc.exit_code}


def _exit(rows: list[dict]) -> int:
    """0 if every board succeeded, else the highest documented code among the failed boards (1 at least)."""
    failed = [r for r in rows if not r["ok"]]
    return max((r.get("exit_code") or 1 for r in failed), default=0)


def cmd_check(args) -> int:
    from . import facts as facts_mod

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

    return _exit(_each_board(args, action))


def cmd_push(args) -> int:
    from . import fleet
    from . import push as push_mod
    from .bundle import HashCache

    cache = HashCache(_inv(args).state_dir / "hashcache.json")  # shared by the boards (thread-safe)

    def action(inv, board, conn, prog):
        task = prog.add_task(f"{board.name}: planning", total=None)

        def on_plan(plan):
            prog.update(task, description=f"{board.name}: sending {plan.send_files} files", total=plan.send_bytes)
            if args.dry_run and not args.json:
                report.print_plan(ui.err(), plan)

        try:
            res = push_mod.push(inv, board, conn, dry_run=args.dry_run, on_plan=on_plan,
                                on_bytes=lambda n: prog.advance(task, n), cache=cache,
                                health_check=not args.no_health_check, compress=args.compress,
                                on_phase=lambda phase: prog.update(task, description=f"{board.name}: {phase}"))
        finally:
            prog.remove_task(task)
        if not args.json:
            report.print_push(ui.out(), res)
        return report.push_json(res)

    def prepare(inv, board):  # plan before acting: the model variant this board needs must exist
        from .models.simulated import prepare_model  # a sandbox Atlas board's simulated .om, built once
        from .targets import for_board

        prepare_model(inv.app, for_board(board), board, inv.state_dir)

    rollout = fleet.Rollout(forks=args.forks or fleet.DEFAULT_FORKS, canary=args.canary or 0, batch=args.batch,
                            serial=args.serial, max_fail=args.max_fail)
    return _exit(_each_board(args, action, prepare, view=lambda: ui.transfer_progress(False), rollout=rollout))


def cmd_releases(args) -> int:
    from . import push as push_mod

    def action(inv, board, conn, prog):
        info = push_mod.releases(inv, conn)
        if not args.json:
            report.print_releases(ui.out(), board.name, info)
        return {"ok": True, **info.to_json()}

    return _exit(_each_board(args, action))


def cmd_rollback(args) -> int:
    from . import push as push_mod

    def action(inv, board, conn, prog):
        info = push_mod.rollback(inv, conn, args.to)
        if not args.json:
            ui.out().print(f"{board.name}: current {info.previous} -> [bold]{info.current}[/]")
        return info.to_json()

    return _exit(_each_board(args, action))


def cmd_run(args) -> int:
    from . import jobs

    images = Path(args.images).resolve() if args.images else None
    sizes = args.batch or []
    if len(sizes) > 1 and args.mode != "bench":
        raise UsageError("several batch sizes (--batch 1,4,8) go with --mode bench")
    overrides = {k: v for k, v in (("batch", sizes[0] if sizes else None), ("topk", args.topk)) if v}
    if len(sizes) > 1:
        overrides["bench"] = {"batch_sizes": sizes}

    single = len(_inv(args).select(args.target)) == 1  # per-image lines only for one board

    def action(inv, board, conn, prog):
        task = prog.add_task(f"{board.name}: starting", total=None, rate="")
        on_event = _run_events(prog, task, board, echo=single and not args.json and not args.quiet)
        if args.attach:
            res = jobs.attach(inv, board, conn, args.attach, on_event=on_event)
        else:
            res = jobs.run(inv, board, conn, images=images, run_id=args.resume or args.run_id,
                           resume=bool(args.resume), mode=args.mode, overrides=overrides, on_event=on_event)
        if not args.json:
            report.print_run(ui.out(), res)
        return report.run_json(res)

    return _run_exit(_each_board(args, action, view=lambda: ui.count_progress(False), exit_code=_run_exit))


def _run_exit(rows: list[dict]) -> int:
    """``_exit``, except 5 (partial) when every board that failed finished its run with some images classified."""
    if all(r["ok"] for r in rows):
        return 0
    partial = all(r["ok"] or (r.get("ended") and r.get("images_ok")) for r in rows)
    return EXIT_PARTIAL if partial else _exit(rows)


def _run_events(prog, task, board, echo: bool):
    """The live row of one board's run, from the agent's events."""
    bench = []

    def on_event(ev):
        kind = ev["event"]
        if kind == "start":
            bench.append(ev.get("mode") == "bench")
            prog.update(task, description=f"{board.name}: {ev.get('run_id')}", total=ev["total"],
                        completed=ev.get("skipped", 0))
        elif kind == "progress" and bench and bench[0]:  # a bench counts loops, not images
            prog.update(task, completed=ev.get("done", 0), rate=f"{ev.get('ips', 0):.1f} it/s")
        elif kind in ("result", "error"):
            prog.advance(task)
            if echo:
                prog.console.print(report.event_line(ev))
        elif kind == "progress" and ev.get("ips"):
            prog.update(task, rate=f"{ev['ips']:.1f} img/s")

    return on_event


def cmd_stop(args) -> int:
    from . import jobs

    def action(inv, board, conn, prog):
        info = jobs.stop(inv, conn, args.run)
        if not args.json:
            what = f"stopped (pid {info.pid})" if info.stopped else "was not running"
            ui.out().print(f"{board.name}: run {args.run} {what}; finished images are kept, resume with --resume {args.run}")
        return info.to_json()

    return _exit(_each_board(args, action))


def cmd_pull(args) -> int:
    from . import jobs

    def action(inv, board, conn, prog):
        task = prog.add_task(f"{board.name}: pulling", total=None)
        res = jobs.pull(inv, board, conn, args.run, dest_root=Path(args.dest) if args.dest else None,
                        include_inputs=args.include_inputs, on_bytes=lambda n: prog.advance(task, n))
        if not args.json:
            report.print_pull(ui.out(), res)
        return report.pull_json(res)

    return _exit(_each_board(args, action, view=lambda: ui.transfer_progress(False, transient=False)))


def cmd_status(args) -> int:
    from . import jobs

    def action(inv, board, conn, prog):
        info = jobs.status(inv, conn)
        if not args.json:
            report.print_status(ui.out(), board.name, info)
        return {"ok": True, **info.to_json()}

    return _exit(_each_board(args, action))


def cmd_exec(args) -> int:
    """Stream the command's output (or, with --json, collect it per board); exit with the worst status."""
    from .ssh import user_command

    argv = list(args.command)
    # argparse's REMAINDER also swallows our own flags written after the board: take them up to `--`
    while argv and argv[0] in ("--json", "--accept-new-host-key"):
        setattr(args, argv.pop(0)[2:].replace("-", "_"), True)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise DeployError("nothing to run: deploy exec BOARD -- CMD [ARGS...]")

    def action(inv, board, conn, prog):
        chan = conn.channel(user_command(inv.app.name, argv))
        chan.shutdown_write()
        stdout, stderr = chan.makefile("rb"), chan.makefile_stderr("rb")
        if args.json:
            o, e = stdout.read(), stderr.read()
            code = chan.recv_exit_status()
            return {"ok": code == 0, "exit_code": code, "stdout": o.decode("utf-8", "replace"),
                    "stderr": e.decode("utf-8", "replace")}
        tag = f"{board.name}: ".encode() if many else b""  # several boards at once: each line says whose
        for line in stdout:
            with out_lock:
                sys.stdout.buffer.write(tag + line)
                sys.stdout.buffer.flush()
        err = stderr.read()
        with out_lock:
            sys.stderr.buffer.write(b"".join(tag + ln for ln in err.splitlines(keepends=True)))
        code = chan.recv_exit_status()
        return {"ok": code == 0, "exit_code": code}

    import threading

    out_lock = threading.Lock()
    many = len(_inv(args).select(args.target)) > 1
    return _exit(_each_board(args, action))  # a failed row's code is the command's own exit status


# ---------------------------------------------------------------- models


def cmd_model(args) -> int:
    from . import models

    if args.action == "demo":
        inv_path = Path(args.inventory)
        root = Path(args.dest) if args.dest else inv_path.resolve().parent / "demo"
        with ui.status("building demo model, labels and photos (cached)"):
            assets = models.build_demo(root, force=args.force, weights=Path(args.weights) if args.weights else None,
                                       torch_factory=args.torch)  # fmt: skip
        info = {k: str(v) for k, v in vars(assets).items()} if not hasattr(assets, "__dataclass_fields__") else {
            k: (str(v) if isinstance(v, Path) else v) for k, v in assets.__dict__.items()}
        if args.json:
            _emit_json(info)
        else:
            ui.out().print(f"demo assets in {root} ({'built' if getattr(assets, 'rebuilt', False) else 'cached'})")
        return 0
    if args.action == "export":
        res = models.export_torch(args.torch, Path(args.output), models.parse_shape(args.input_shape),
                                  weights=Path(args.weights) if args.weights else None, opset=args.opset)
        info = {k: (str(v) if isinstance(v, Path) else v) for k, v in res.__dict__.items()}
        if args.json:
            _emit_json(info)
        else:
            ui.out().print(f"exported {res.path} (max |onnx - torch| = {res.max_abs_diff:.2e})")
        return 0
    if args.action == "convert":
        from .targets import PROFILES

        if getattr(PROFILES.get(args.target), "backend", None) == "magicmind":  # a Cambricon target
            from .models import magicmind

            return magicmind.convert(args, lambda: _inv(args).app.preprocess, ui, _emit_json)
        return _convert(args)
    return 2


def _convert(args) -> int:
    """``deploy model convert``: build the atc command; run it when the CANN toolkit is here.

    Without ``atc`` on PATH the exact command is printed (and the AIPP file written next to
    the output) so it can be run on a machine with the toolkit; that exits 3, not 0. With
    ``--simulate`` the simulated atc runs that same command and writes a simulated model, which
    only sandbox boards load.
    """
    from .models import atc

    if not args.model:
        raise DeployError("deploy model convert MODEL --target TARGET: name the model file")
    aipp = args.aipp
    if aipp == "app":  # the inventory's own preprocessing, so the .om normalises like the CPU path
        aipp = atc.aipp_from_preprocess(_inv(args).app.preprocess)
        if aipp is None and not args.json:
            ui.err().print("no AIPP: app.preprocess does not normalise (the model does it itself)")
    progress = None if args.json else (lambda line: ui.err().print(ui.escape(line)))
    try:
        plan = atc.plan_conversion(
            args.model, args.target, weight=args.weight, input_shape=args.input_shape, aipp=aipp,
            output=args.output, fp16_inputs=tuple(args.fp16_input or ()), output_type=args.output_type,
        )  # fmt: skip
        if plan.aipp_config and not args.json:
            ui.err().print(f"AIPP config (static, {ui.escape(str(args.aipp))}): {plan.aipp_path}")
        result = atc.run_conversion(plan, progress=progress, simulate=args.simulate)
    except atc.AtcNotFound as exc:
        if args.json:
            _emit_json({"converted": False, "command": exc.command, "aipp": str(plan.aipp_path or "") or None})
        else:
            ui.out().print(ui.escape(exc.command), soft_wrap=True)
            ui.err().print("[yellow]not converted[/]: atc is not on PATH; run the command above where the CANN toolkit "
                      "is installed (source its set_env.sh first)")
        return exc.exit_code
    except atc.ConversionError as exc:
        ui.error_line(str(exc))
        return exc.exit_code
    if args.json:
        _emit_json({"converted": True, "output": str(result), "command": plan.command, "simulated": args.simulate})
    elif args.simulate:
        ui.out().print(f"converted: {ui.escape(str(result))} is a SIMULATED model: it runs only on sandbox boards "
                       "(the simulated Ascend runtime); `deploy push` refuses it for a real board", soft_wrap=True)
    else:
        ui.out().print(f"converted: {ui.escape(str(result))}")
    return 0


# ---------------------------------------------------------------- trust


def cmd_trust(args) -> int:
    """``deploy trust BOARD``: put your public key on a password-only board (``trust.py``), then say what
    was installed and which host keys were recorded. The password is asked at most once and never kept."""
    from . import trust
    from .errors import InventoryError

    inv = _inv(args)
    if args.board not in inv.boards:
        inv.select(args.board)  # the usual one-line error for an unknown name
        raise InventoryError(f"{inv.path}: deploy trust takes one board, not {args.board!r}")
    board = inv.boards[args.board]
    if board.sandbox:
        ui.err().print(f"{board.name} is a sandbox board: `deploy sandbox up` installed the project's key already")
        return 0
    res = trust.trust(inv, board, password=trust.password_prompt(args.password_stdin), key=args.key,
                      accept_new=args.accept_new_host_key or args.yes, confirm=None if args.yes else trust.tty_confirm)
    if args.json:
        _emit_json({"board": board.name, **res.to_json()})
        return 0
    for who, fp in res.host_keys:
        ui.err().print(f"recorded host key {fp} of {ui.escape(who)} in .deploy/known_hosts")
    what = "installed" if res.added else "already there:"
    proof = "; key login verified" if res.verified else " (its private key is not here: login not tried)"
    ui.out().print(f"{board.name}: {what} {res.key.kind} {res.key.fingerprint} ({ui.escape(str(res.key.path))}) "
                   f"in {ui.escape(res.login)}:~/.ssh/authorized_keys{proof}")
    return 0
