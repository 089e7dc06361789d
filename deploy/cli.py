"""``deploy``: argument parsing and rendering only (rich on stderr, tables or ``--json`` on stdout).

Exit codes: 0 everything asked for succeeded; 1 an operation failed; 2 bad inventory or
usage; 3 host-key refusal; 4 board unreachable; 5 a run finished partially (some images
failed). User mistakes print one line, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from . import inventory as inventory_mod
from . import report
from .errors import DeployError

EXIT_PARTIAL = 5

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)


def _inv(args) -> inventory_mod.Inventory:
    return inventory_mod.load(args.inventory)


@contextmanager
def _connect(inv, board, args):
    from .ssh import Connection, endpoint_for

    conn = Connection(endpoint_for(inv, board), accept_new=getattr(args, "accept_new_host_key", False))
    try:
        conn.open()
        yield conn
    finally:
        conn.close()


def _emit_json(obj) -> None:
    out.print_json(json.dumps(obj, default=str))


# ---------------------------------------------------------------- sandbox


def cmd_sandbox(args) -> int:
    from . import sandbox

    inv = _inv(args)
    if args.action == "up":
        with err.status("starting sandbox boards") as status:
            boxes = sandbox.up(inv, args.names or None, log=lambda line: status.update(escape(line[-100:])))
        if args.json:
            _emit_json([b.to_json() for b in boxes])
        else:
            for b in boxes:
                out.print(f"[green]up[/] {b.name}: {b.user}@{b.host}:{b.port} home {b.home} (pid {b.pid})")
        return 0
    if args.action == "down":
        boxes = sandbox.down(inv, args.names or None, purge=args.purge)
        if args.json:
            _emit_json([b.to_json() for b in boxes])
        else:
            for b in boxes:
                out.print(f"[yellow]down[/] {b.name}" + (" (purged)" if args.purge else ""))
        return 0
    boxes = sandbox.status(inv)
    if args.json:
        _emit_json([b.to_json() for b in boxes])
        return 0
    t = Table("board", "state", "address", "user", "home", "pid")
    for b in boxes:
        t.add_row(b.name, "[green]running[/]" if b.running else "[red]stopped[/]", f"{b.host}:{b.port}", b.user, b.home,
                  str(b.pid or "-"))
    out.print(t)
    for b in boxes:
        if b.running:
            out.print(f"{b.name}: {b.ssh_command}")
    return 0


# ---------------------------------------------------------------- per-board commands


def _each_board(args, action) -> list[dict]:
    """Run ``action(inv, board, conn) -> row`` on every selected board, one connection each.

    A board that fails gives an error row and the others go on; rows go to stdout as JSON
    with ``--json`` (the action renders for people otherwise). Every row has "board" and "ok".
    """
    inv = _inv(args)
    rows = []
    for board in inv.select(args.target):
        try:
            with _connect(inv, board, args) as conn:
                rows.append({"board": board.name, **action(inv, board, conn)})
        except DeployError as exc:
            rows.append({"board": board.name, "ok": False, "error": str(exc)})
            err.print(f"[red]error[/] {escape(str(exc))}")
    if args.json:
        _emit_json(rows)
    return rows


def _exit(rows: list[dict]) -> int:
    return 0 if all(r["ok"] for r in rows) else 1


def cmd_check(args) -> int:
    from . import facts as facts_mod

    def action(inv, board, conn):
        facts, findings = facts_mod.check(inv, board, conn)
        bad = [f for f in findings if not f.ok and f.severity == "error"]
        if not args.json:
            t = Table("check", "result", "detail", title=f"{board.name} (target {board.target})")
            for f in findings:
                mark = "[green]ok[/]" if f.ok else ("[yellow]warn[/]" if f.severity == "warning" else "[red]FAIL[/]")
                t.add_row(f.check, mark, escape(f.detail))
            out.print(t)
        return {"ok": not bad, "target": board.target, "facts": facts.to_json(), "findings": [f.__dict__ for f in findings]}

    return _exit(_each_board(args, action))


def cmd_push(args) -> int:
    from . import push as push_mod
    from .bundle import HashCache

    cache: list[HashCache] = []

    def action(inv, board, conn):
        if not cache:
            cache.append(HashCache(inv.state_dir / "hashcache.json"))
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeElapsedColumn(), console=err, transient=True, disable=args.json,
        ) as prog:
            task = prog.add_task(f"{board.name}: planning", total=None)

            def on_plan(plan):
                prog.update(task, description=f"{board.name}: sending {plan.send_files} files", total=plan.send_bytes)
                if args.dry_run and not args.json:
                    report.print_plan(err, plan)

            res = push_mod.push(inv, board, conn, dry_run=args.dry_run, on_plan=on_plan,
                                on_bytes=lambda n: prog.advance(task, n), cache=cache[0])
        if not args.json:
            report.print_push(out, res)
        return report.push_json(res)

    return _exit(_each_board(args, action))


def cmd_releases(args) -> int:
    from . import push as push_mod

    def action(inv, board, conn):
        info = push_mod.releases(inv, conn)
        if not args.json:
            report.print_releases(out, board.name, info)
        return {"ok": True, **info.to_json()}

    return _exit(_each_board(args, action))


def cmd_rollback(args) -> int:
    from . import push as push_mod

    def action(inv, board, conn):
        info = push_mod.rollback(inv, conn, args.to)
        if not args.json:
            out.print(f"{board.name}: current {info.previous} -> [bold]{info.current}[/]")
        return info.to_json()

    return _exit(_each_board(args, action))


def cmd_run(args) -> int:
    from . import jobs

    images = Path(args.images).resolve() if args.images else None
    overrides = {k: v for k, v in (("batch", args.batch), ("topk", args.topk)) if v}

    def action(inv, board, conn):
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), console=err, transient=False, disable=args.json,
        ) as prog:
            task = prog.add_task(f"{board.name}: starting", total=None, rate="")

            def on_event(ev):
                kind = ev["event"]
                if kind == "start":
                    prog.update(task, description=f"{board.name}: {ev.get('run_id')}", total=ev["total"],
                                completed=ev.get("skipped", 0))
                elif kind in ("result", "error"):
                    prog.advance(task)
                    if not args.json and not args.quiet:
                        prog.console.print(report.event_line(ev))
                elif kind == "progress" and ev.get("ips"):
                    prog.update(task, rate=f"{ev['ips']:.1f} img/s")

            if args.attach:
                res = jobs.attach(inv, board, conn, args.attach, on_event=on_event)
            else:
                res = jobs.run(inv, board, conn, images=images, run_id=args.resume or args.run_id,
                               resume=bool(args.resume), mode=args.mode, overrides=overrides, on_event=on_event)
        if not args.json:
            report.print_run(out, res)
        return report.run_json(res)

    rows = _each_board(args, action)
    if all(r["ok"] for r in rows):
        return 0
    # partial: every board that failed finished its run with some images classified
    partial = all(r["ok"] or (r.get("ended") and r.get("images_ok")) for r in rows)
    return EXIT_PARTIAL if partial else 1


def cmd_stop(args) -> int:
    from . import jobs

    def action(inv, board, conn):
        info = jobs.stop(inv, conn, args.run)
        if not args.json:
            what = f"stopped (pid {info.pid})" if info.stopped else "was not running"
            out.print(f"{board.name}: run {args.run} {what}; finished images are kept, resume with --resume {args.run}")
        return info.to_json()

    return _exit(_each_board(args, action))


def cmd_pull(args) -> int:
    from . import jobs

    def action(inv, board, conn):
        with Progress(
            TextColumn("[bold]{task.description}"), DownloadColumn(), TransferSpeedColumn(), console=err,
            transient=True, disable=args.json,
        ) as prog:
            task = prog.add_task(f"{board.name}: pulling", total=None)
            res = jobs.pull(inv, board, conn, args.run, dest_root=Path(args.dest) if args.dest else None,
                            include_inputs=args.include_inputs, on_bytes=lambda n: prog.advance(task, n))
        if not args.json:
            report.print_pull(out, res)
        return report.pull_json(res)

    return _exit(_each_board(args, action))


def cmd_status(args) -> int:
    from . import jobs

    def action(inv, board, conn):
        info = jobs.status(inv, conn)
        if not args.json:
            report.print_status(out, board.name, info)
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

    def action(inv, board, conn):
        chan = conn.channel(user_command(inv.app.name, argv))
        chan.shutdown_write()
        stdout, stderr = chan.makefile("rb"), chan.makefile_stderr("rb")
        if args.json:
            o, e = stdout.read(), stderr.read()
            code = chan.recv_exit_status()
            return {"ok": code == 0, "exit_code": code, "stdout": o.decode("utf-8", "replace"),
                    "stderr": e.decode("utf-8", "replace")}
        for line in stdout:
            sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
        sys.stderr.buffer.write(stderr.read())
        code = chan.recv_exit_status()
        return {"ok": code == 0, "exit_code": code}

    rows = _each_board(args, action)
    return max((r.get("exit_code", 1) if not r["ok"] else 0) for r in rows)


# ---------------------------------------------------------------- models


def cmd_model(args) -> int:
    from . import models

    try:
        if args.action == "demo":
            inv_path = Path(args.inventory)
            root = Path(args.dest) if args.dest else inv_path.resolve().parent / "demo"
            with err.status("building demo model, labels and photos (cached)"):
                assets = models.build_demo(root, force=args.force)
            info = {k: str(v) for k, v in vars(assets).items()} if not hasattr(assets, "__dataclass_fields__") else {
                k: (str(v) if isinstance(v, Path) else v) for k, v in assets.__dict__.items()}
            if args.json:
                _emit_json(info)
            else:
                out.print(f"demo assets in {root} ({'built' if getattr(assets, 'rebuilt', False) else 'cached'})")
            return 0
        if args.action == "export":
            res = models.export_torch(args.torch, Path(args.output), models.parse_shape(args.input_shape),
                                      weights=Path(args.weights) if args.weights else None, opset=args.opset)
            info = {k: (str(v) if isinstance(v, Path) else v) for k, v in res.__dict__.items()}
            if args.json:
                _emit_json(info)
            else:
                out.print(f"exported {res.path} (max |onnx - torch| = {res.max_abs_diff:.2e})")
            return 0
        if args.action == "convert":
            return _convert(args)
    except models.ModelError as exc:
        raise DeployError(str(exc)) from None
    return 2


def _aipp_from_app(pre: dict) -> dict | str:
    """app.preprocess (value = (pixel * scale - mean) / std) as AIPP's fractions-of-1 mean/std."""
    if "mean" not in pre and "std" not in pre:
        return pre.get("preset", "imagenet")
    scale = float(pre.get("scale", 1 / 255))
    mean = [float(m) / (255 * scale) for m in pre.get("mean", [0.485, 0.456, 0.406])]
    std = [float(v) / (255 * scale) for v in pre.get("std", [0.229, 0.224, 0.225])]
    bgr = pre.get("color", "BGR" if pre.get("preset") in ("caffe", "cifar") else "RGB") == "BGR"
    return {"mean": mean, "std": std, "bgr": bgr}


def _convert(args) -> int:
    """``deploy model convert``: build the atc command; run it when the CANN toolkit is here.

    Without ``atc`` on PATH the exact command is printed (and the AIPP file written next to
    the output) so it can be run on a machine with the toolkit; that exits 3, not 0.
    """
    from .models import atc

    if not args.model:
        raise DeployError("deploy model convert MODEL --target TARGET: name the model file")
    aipp = args.aipp
    if aipp == "app":  # the inventory's own preprocessing, so the .om normalises like the CPU path
        aipp = _aipp_from_app(_inv(args).app.preprocess)
    try:
        plan = atc.plan_conversion(
            args.model, args.target, weight=args.weight, input_shape=args.input_shape, aipp=aipp,
            output=args.output, fp16_inputs=tuple(args.fp16_input or ()), output_type=args.output_type,
        )
        if plan.aipp_config and not args.json:
            err.print(f"AIPP config (static, {escape(str(args.aipp))}): {plan.aipp_path}")
        result = atc.run_conversion(plan, progress=None if args.json else (lambda line: err.print(escape(line))))
    except atc.AtcNotFound as exc:
        if args.json:
            _emit_json({"converted": False, "command": exc.command, "aipp": str(plan.aipp_path or "") or None})
        else:
            out.print(escape(exc.command), soft_wrap=True)
            err.print("[yellow]not converted[/]: atc is not on PATH; run the command above where the CANN toolkit "
                      "is installed (source its set_env.sh first)")
        return exc.exit_code
    except atc.ConversionError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        return exc.exit_code
    if args.json:
        _emit_json({"converted": True, "output": str(result), "command": plan.command})
    else:
        out.print(f"converted: {escape(str(result))}")
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deploy", description="Ship image-classification apps to Atlas boards over SSH.")
    p.add_argument("-i", "--inventory", default=os.environ.get("DEPLOY_INVENTORY", "inventory.yaml"),
                   help="inventory file (default ./inventory.yaml)")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, target=True):
        sp.add_argument("-i", "--inventory", default=argparse.SUPPRESS, help="inventory file")
        if target:
            sp.add_argument("target", help="a board, a group, or all")
        sp.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        sp.add_argument("--accept-new-host-key", action="store_true",
                        help="trust and record an unknown host key (a changed key is always refused)")

    sp = sub.add_parser("sandbox", help="local sandbox boards (real sshd on 127.0.0.1)")
    sp.add_argument("action", choices=["up", "down", "status"])
    sp.add_argument("names", nargs="*", help="sandbox boards (default: all in the inventory)")
    sp.add_argument("--purge", action="store_true", help="down: also remove the boards' homes and users")
    common(sp, target=False)
    sp.set_defaults(func=cmd_sandbox)

    sp = sub.add_parser("check", help="read board facts and compare them with the board's target profile")
    common(sp)
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("push", help="push the app to boards (only what changed travels)")
    common(sp)
    sp.add_argument("--dry-run", action="store_true", help="show what would be sent and changed; touch nothing")
    sp.set_defaults(func=cmd_push)

    sp = sub.add_parser("releases", help="list releases on boards")
    common(sp)
    sp.set_defaults(func=cmd_releases)

    sp = sub.add_parser("rollback", help="switch back to the previous (or a given) release")
    common(sp)
    sp.add_argument("--to", help="release id (or unique prefix)")
    sp.set_defaults(func=cmd_rollback)

    sp = sub.add_parser("run", help="classify images on boards, with live progress")
    common(sp)
    sp.add_argument("--images", help="local file or folder of images to upload for this run")
    sp.add_argument("--run-id", help="name the run (default: UTC time + random suffix)")
    sp.add_argument("--resume", metavar="RUN_ID", help="restart a killed run; finished images are skipped")
    sp.add_argument("--attach", metavar="RUN_ID", help="follow a run that is already going")
    sp.add_argument("--mode", choices=["run", "bench", "eval"], default="run")
    sp.add_argument("--batch", type=int)
    sp.add_argument("--topk", type=int)
    sp.add_argument("-q", "--quiet", action="store_true", help="no per-image lines")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("stop", help="stop a run on boards (it keeps what it finished; --resume goes on)")
    common(sp)
    sp.add_argument("--run", required=True, help="run id")
    sp.set_defaults(func=cmd_stop)

    sp = sub.add_parser("pull", help="fetch a run's outputs into outputs/<board>/<run-id>/")
    common(sp)
    sp.add_argument("--run", help="run id (default: the latest)")
    sp.add_argument("--dest", help="outputs root (default ./outputs)")
    sp.add_argument("--include-inputs", action="store_true", help="also fetch uploaded input images")
    sp.set_defaults(func=cmd_pull)

    sp = sub.add_parser("status", help="current release, env block, last runs")
    common(sp)
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser("exec", help="run a command on boards with the app environment")
    common(sp)
    sp.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    sp.set_defaults(func=cmd_exec)

    sp = sub.add_parser("model", help="prepare models: export from torch, the demo model, atc conversion")
    sp.add_argument("action", choices=["export", "demo", "convert"])
    sp.add_argument("model", nargs="?", help="convert: the model file (.onnx, .prototxt, .air, .pb)")
    sp.add_argument("--torch", help="export: MODULE:FACTORY (or path/to/file.py:FACTORY)")
    sp.add_argument("--weights", help="export: weights file (state dict)")
    sp.add_argument("--weight", help="convert: Caffe .caffemodel")
    sp.add_argument("--input-shape", help="export: N,C,H,W; convert: name:N,C,H,W")
    sp.add_argument("--opset", type=int, default=17)
    sp.add_argument("-o", "--output", help="output file")
    sp.add_argument("--dest", help="demo: where to build (default <project>/demo)")
    sp.add_argument("--force", action="store_true", help="demo: rebuild even if cached")
    sp.add_argument("--target", default="atlas200dk", help="convert: target profile")
    sp.add_argument("--aipp", help="convert: bake preprocessing into the model with static AIPP: a preset "
                    "(imagenet, caffe, cifar) or 'app' for the inventory's app.preprocess")
    sp.add_argument("--fp16-input", action="append", help="convert: input node fed as fp16 (repeatable)")
    sp.add_argument("--output-type", default="FP32")
    common(sp, target=False)
    sp.set_defaults(func=cmd_model)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DeployError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
