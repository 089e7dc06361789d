"""``deploy verify | bench | eval | report``: can the numbers a board gives be trusted, and what do they look like.

* **verify**: the board runs what is deployed (its backend, model variant, AIPP or not) on the images with
  whole probability vectors, the host runs the app's ONNX model in fp32 on the same images at the same time
  (``verify.HostReference``), and ``verify.compare`` says per image and overall how far apart they are.
  Below ``--min-agreement`` (top-1 agreement, default 0.99) the board fails (exit 1).
* **bench**: the agent's pure-inference benchmark at each ``--batch`` size: img/s and latency mean / p50 /
  p90 / p99, warm-up excluded (seed 002's table, ais_bench's summary), ``bench.json`` and ``bench.png``.
* **eval**: top-1..top-5 against a ``NAME LABEL`` file (ImageNet ``val_label.txt``), ``result.json`` as
  ModelZoo's ``imagenet_acc_eval.py`` writes it (1001-class models compared against LABEL + 1). The host
  reads and checks the label file before any board is touched and sends only the entries of the images run.
* **report**: ``report.html`` + ``contact_sheet.png`` of a pulled run (``htmlreport``).

Each writes into the run's pulled directory ``outputs/<board>/<run-id>/`` (files written whole or not at
all); several boards also get ``outputs/_fleet/<command>-<time>/`` with them side by side (board names
start with a letter or digit, so ``_fleet`` is never a board's). Re-pulling a run with ``deploy pull``
replaces its directory; these commands keep their own files when they pull.

Exit codes: 0 all good; 1 a board failed (verify below the threshold, a run that failed, a board with no
run yet, a run whose outputs are gone); 2 bad input (label file, batch list, images), nothing touched.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

from ..analysis import HOST_FILES, write_whole
from ..analysis.labels import image_files, read_labels
from ..board import protocol
from ..errors import RemoteError, RunError, UsageError
from ..ops import outputs, runs
from . import render, ui
from .boards import each_board, inventory, worst
from .runs import run_events


def _images(args, inv) -> Path:
    """The images to run: --images DIR (uploaded), else the app's (already in the release)."""
    if args.images:
        p = Path(args.images).resolve()
        if not p.exists():
            raise UsageError(f"--images {args.images}: no such file or directory")
    elif inv.app.images is not None:
        p = inv.app.images
        if not p.is_dir():
            raise UsageError(f"app.images {p}: no such directory (or give --images DIR)")
    else:
        raise UsageError("the app has no images: give --images DIR")
    if not image_files(p):
        raise UsageError(f"{p}: no images in it")
    return p


def _pull(inv, board, conn, run_id: str) -> Path:
    """Pull a run into outputs/<board>/<run-id>/, keeping what these commands wrote there before."""
    return outputs.pull(inv, board, conn, run_id, keep=HOST_FILES).path


def _run(inv, board, conn, prog, *, mode: str, images: Path | None, overrides: dict) -> runs.RunResult:
    task = prog.add_task(f"{board.name}: starting", total=None, rate="")
    try:
        res = runs.run(inv, board, conn, images=images, mode=mode, overrides=overrides,
                       on_event=run_events(prog, task, board, echo=None))
    finally:
        prog.remove_task(task)
    if not res.ended or res.summary.get("status") == "failed":
        why = res.summary.get("error") or f"the agent exited {res.exit_code}"
        raise RunError(f"{board.name}: run {res.run_id} failed: {why}")
    return res


@contextmanager
def pulled_files(board, run_id: str):
    """What the host reads of a pulled run was written by the board: a file that is not what a run writes
    (wrong JSON, wrong types) fails that board in one line, as a malformed reply does."""
    try:
        yield
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as exc:
        raise RunError(f"{board.name}: run {run_id}: a pulled file is not what a run writes "
                       f"({type(exc).__name__}: {str(exc)[:200]})") from None


def _fleet_dir(inv, cmd: str) -> Path:
    return inv.outputs / "_fleet" / f"{cmd}-{time.strftime('%Y%m%d-%H%M%S')}"


# ---------------------------------------------------------------- verify


def cmd_verify(args) -> int:
    from ..analysis import verify

    inv = inventory(args)
    if not 0.0 <= args.min_agreement <= 1.0:
        raise UsageError(f"--min-agreement must be between 0 and 1, not {args.min_agreement}")
    onnx = inv.app.models.get("onnx")
    if onnx is None or not onnx.is_file():
        raise UsageError("verify needs app.models.onnx (the source model) for the host's fp32 reference")
    images = _images(args, inv)
    inv.select(args.target)  # an unknown board fails before the host starts working
    upload = images if args.images else None
    t0 = time.perf_counter()
    reference = verify.HostReference(inv.app, images)  # runs while the boards run

    def action(inv, board, conn, prog):
        res = _run(inv, board, conn, prog, mode="run", images=upload, overrides={"probs": True, "topk": 5})
        path = _pull(inv, board, conn, res.run_id)
        board_s = time.perf_counter() - t0
        host = reference.result()
        with pulled_files(board, res.run_id):
            verdict = verify.compare(host, verify.load_probs(path), args.min_agreement)
        try:  # what the board ran: the job it built from the deployed release
            job = json.loads((path / "job.json").read_text())
        except (OSError, ValueError):
            job = {}
        doc = {"board": board.name, "run_id": res.run_id, "release": res.release, "backend": job.get("backend"),
               "model": job.get("model"), **verdict.to_json()}
        write_whole(path / "verify.json", json.dumps(doc, indent=2) + "\n")
        if not args.json:
            _print_verify(board.name, res.run_id, verdict)
        row = {"ok": verdict.passed, "run_id": res.run_id, "release": res.release, "path": str(path),
               "backend": doc["backend"], "model": doc["model"],
               "board_seconds": round(board_s, 3), "host_seconds": round(host.seconds, 3),
               **{k: v for k, v in verdict.to_json().items() if k != "images"}}
        if not verdict.passed:
            row["exit_code"] = 1
            row["error"] = (f"top-1 agreement {verdict.agreement:.1%} < {args.min_agreement:.1%} "
                            f"({len(verdict.disagreeing)} of {verdict.compared} images disagree)"
                            if verdict.compared else "no image was classified by both sides")
        return row

    rows = each_board(args, action, view=lambda: ui.count_progress(False))
    if not args.json:
        total = time.perf_counter() - t0
        host_s = next((r["host_seconds"] for r in rows if "host_seconds" in r), None)
        board_s = max((r.get("board_seconds", 0) for r in rows), default=0)
        if host_s is not None:
            ui.err().print(f"verify: {total:.2f}s in all; boards (run + pull) {board_s:.2f}s, host fp32 reference "
                           f"{host_s:.2f}s, run at the same time")
    return worst(rows)


def _print_verify(board: str, run_id: str, v) -> None:
    t = ui.table("image", "agree", "host top-1", "board top-1", "top-5", "max |Δp|", "mean |Δp|",
                 title=f"{board} verify {run_id}: board vs host fp32")
    for c in v.images:
        host = f"{c.host[1]} ({c.host[2]:.3f})" if len(c.host) > 2 else ""
        brd = f"{c.board[1]} ({c.board[2]:.3f})" if len(c.board) > 2 else ui.escape(c.error)
        t.add_row(ui.escape(c.image), "[green]yes[/]" if c.agree else "[red]NO[/]", ui.escape(host), ui.escape(brd),
                  f"{c.top5_overlap:.0%}", f"{c.max_abs:.3g}", f"{c.mean_abs:.3g}")
    ui.out().print(t)
    mark = "[green]passed[/]" if v.passed else "[red]FAILED[/]"
    ui.out().print(f"{ui.escape(board)}: {mark}: top-1 agreement {v.agreement:.1%} (threshold {v.min_agreement:.0%}), "
                   f"top-5 overlap {v.top5_overlap:.1%}, max |Δp| {v.max_abs:.3g}, mean |Δp| {v.mean_abs:.3g}, "
                   f"{v.compared} images" + (f"; only on one side: {', '.join(v.unmatched[:5])}" if v.unmatched else ""))


# ---------------------------------------------------------------- bench


def cmd_bench(args) -> int:
    sizes = args.batch
    if args.loop < 1 or args.warmup < 0:
        raise UsageError("--loop must be >= 1 and --warmup >= 0")
    inventory(args).select(args.target)

    def action(inv, board, conn, prog):
        opts = {"batch_sizes": sizes, "loop": args.loop, "warmup": args.warmup}
        res = _run(inv, board, conn, prog, mode="bench", images=None, overrides={"bench": opts})
        path = _pull(inv, board, conn, res.run_id)
        backend = res.summary.get("backend") or {}
        doc = {"board": board.name, "target": board.target, "run_id": res.run_id, "release": res.release,
               "backend": backend, "loop": args.loop, "warmup": args.warmup, "rows": res.summary.get("bench", []),
               "unsupported": res.summary.get("unsupported", [])}
        write_whole(path / "bench.json", json.dumps(doc, indent=2) + "\n")
        if doc["rows"]:
            from ..analysis import charts

            charts.bench_chart({board.name: doc["rows"]}, path / "bench.png", f"{board.name}: deploy bench")
        if not args.json:
            render.print_bench_docs(ui.out(), [doc], "pure inference (warm-up excluded; latency per batch call)")
        return {"ok": True, "run_id": res.run_id, "release": res.release, "path": str(path),
                "rows": doc["rows"], "unsupported": doc["unsupported"]}

    rows = each_board(args, action, view=lambda: ui.count_progress(False))
    good = [r for r in rows if r.get("ok") and r.get("rows")]
    if len(rows) > 1 and good:
        from ..analysis import charts

        out = _fleet_dir(inventory(args), "bench")
        write_whole(out / "bench.json", json.dumps(good, indent=2) + "\n")
        charts.bench_chart({r["board"]: r["rows"] for r in good}, out / "bench.png", "deploy bench")
        if not args.json:
            ui.out().print(f"boards side by side: {ui.escape(str(out / 'bench.png'))}")
    return worst(rows)


# ---------------------------------------------------------------- eval


def cmd_eval(args) -> int:
    inv = inventory(args)
    images = _images(args, inv)
    labels = Path(args.labels)
    if not labels.is_file():
        raise UsageError(f"--labels {args.labels}: no such file")
    truth, absent = read_labels(labels, image_files(images))
    if absent and not args.json:
        ui.err().print(f"[yellow]note[/]: {absent} labels of {ui.escape(str(labels))} name images not in "
                       f"{ui.escape(str(images))}; they are not counted")
    inv.select(args.target)
    upload = images if args.images else None

    def action(inv, board, conn, prog):
        res = _run(inv, board, conn, prog, mode="eval", images=upload,
                   overrides={"eval": {"truth": truth}, "topk": 5})
        path = _pull(inv, board, conn, res.run_id)
        try:
            result = json.loads((path / "result.json").read_text())
        except (OSError, ValueError):
            raise RunError(f"{board.name}: run {res.run_id} wrote no result.json") from None
        metrics = res.summary.get("eval") or {}
        if not args.json:
            with pulled_files(board, res.run_id):
                _print_eval(board.name, res.run_id, result)
        return {"ok": True, "run_id": res.run_id, "release": res.release, "path": str(path), "result": result,
                "top": metrics.get("top"), "images": metrics.get("images"), "classes": metrics.get("classes"),
                "labels_absent": absent}

    return worst(each_board(args, action, view=lambda: ui.count_progress(False)))


def _print_eval(board: str, run_id: str, result: dict) -> None:
    t = ui.table("", "value", title=f"{board} eval {run_id}: {ui.escape(result.get('title', ''))}")
    for kv in result.get("value", []):
        t.add_row(ui.escape(kv["key"]), ui.escape(kv["value"]))
    ui.out().print(t)


# ---------------------------------------------------------------- report


def cmd_report(args) -> int:
    from ..analysis import htmlreport

    inv = inventory(args)
    boards = inv.select(args.target)  # --run was checked by the parser (cli.run_id)
    pages: list = []

    def action(inv, board, conn, prog):
        run_id = args.run
        if run_id is None:
            latest = outputs.status(inv, conn, runs=1).runs
            if not latest:
                raise RunError(f"{board.name}: no runs on the board yet: start one with `deploy run {board.name}`")
            run_id = latest[-1].id
            if not protocol.valid_run_id(run_id):  # it names a directory under outputs/<board>/
                raise RemoteError(f"{board.name}: the board's latest run has an invalid id: {run_id[:200]!r}")
        local = inv.outputs / board.name / run_id
        if args.pull or not (local / "summary.json").is_file():
            local = _pull(inv, board, conn, run_id)
        with pulled_files(board, run_id):
            run = htmlreport.load_run(local, board.name)
            page = htmlreport.write_run(run)
        pages.append(run)
        if not args.json:
            ui.out().print(f"{ui.escape(board.name)}: report {ui.escape(str(page))} "
                           f"(contact sheet {ui.escape(str(local / 'contact_sheet.png'))})")
        return {"ok": True, "run_id": run_id, "report": str(page), "contact_sheet": str(local / "contact_sheet.png")}

    rows = each_board(args, action)
    opened = [r["report"] for r in rows if r.get("ok")]
    if len(boards) > 1 and pages:
        out = _fleet_dir(inv, "report")
        bench = [p for p in pages if p.bench and p.bench.get("rows")]
        if bench:
            from ..analysis import charts

            charts.bench_chart({p.board: p.bench["rows"] for p in bench}, out / "bench.png", "deploy bench")
        order = {b.name: i for i, b in enumerate(boards)}
        page = htmlreport.write_fleet(sorted(pages, key=lambda p: order[p.board]), out / "report.html")
        opened = [str(page)]
        if not args.json:
            ui.out().print(f"boards side by side: {ui.escape(str(page))}")
    if args.open and opened:
        import webbrowser

        webbrowser.open(Path(opened[0]).resolve().as_uri())
    return worst(rows)
