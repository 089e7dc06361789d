"""Rendering of results: rich tables for people, plain dicts for ``--json``.

Everything of board or user origin (file names, labels, ids, facts, error messages) goes through
``escape`` (``ui.visible`` + rich markup escaping) before it reaches rich, so a name like
``[red]x.jpg`` prints as itself and an ESC sequence as ``\x1b[2J``. Numbers a board sent are
formatted only once they are numbers (``_num``): a string where a score belongs prints as text.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .ui import escape
from .ui import table as Table

if TYPE_CHECKING:
    from rich.console import Console


def _size(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _when(ts: float | None) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"
    except (OverflowError, OSError, ValueError):  # a board's idea of a time
        return "-"


def _num(value, spec: str = ".3f", default: str = "-") -> str:
    """A number from a board formatted with ``spec``; anything else escaped as text (or ``default``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return default if value is None else escape(value)


def _top1(rec) -> tuple[str, str]:
    """(label, score) of a result's top-1 as text, whatever shape the board gave it."""
    topk = rec.get("topk") if isinstance(rec, dict) else None
    top = topk[0] if isinstance(topk, list) and topk and isinstance(topk[0], list) else []
    return escape(top[1] if len(top) > 1 else "?"), _num(top[2] if len(top) > 2 else None)


# ---------------------------------------------------------------- push


def print_plan(con: Console, plan) -> None:
    state = "already on the board" if plan.exists else (f"{plan.send_files} files, {_size(plan.send_bytes)} to send, "
                                                         f"{_size(plan.needed_bytes)} of {_size(plan.free_bytes)} free")
    con.print(
        f"[bold]{escape(plan.board)}[/]: release {plan.release} ({plan.files} files, {_size(plan.total_bytes)}): {state}; "
        f"current {escape(plan.current or 'none')}"
    )
    for diff in (plan.env_diff, plan.bashrc_diff):
        if diff:
            con.print(escape(diff.rstrip(), lines=True), highlight=False, soft_wrap=True)


def push_json(res) -> dict:
    out = {
        "board": res.board,
        "ok": True,
        "release": res.release,
        "previous": res.previous,
        "switched": res.switched,
        "dry_run": res.dry_run,
        "payload_bytes": res.payload_bytes,
        "wire_bytes": res.wire_bytes,
        "compressed_objects": res.compressed_objects,
        "reused_objects": res.reused_objects,
        "compress_levels": {str(k): v for k, v in sorted(res.compress_levels.items())},
        "link_bytes_per_s": round(res.link_bytes_per_s) if res.link_bytes_per_s else None,
        "objects": res.objects,
        "linked": res.linked,
        "pruned": res.pruned,
        "bashrc_changed": res.bashrc_changed,
        "env_changed": res.env_changed,
        "env_unsafe": list(getattr(res, "unsafe_env", ())),
        "seconds": round(res.seconds, 3),
        "target": res.target,
        "python": res.python,
        "health": res.health.to_json() if res.health is not None else None,
        "service": getattr(res, "service", None),
        "gate_s": round(res.gate_s, 3),
        "timeline": res.timeline,
    }
    if res.plan is not None:
        out["plan"] = {
            "files": res.plan.files,
            "total_bytes": res.plan.total_bytes,
            "send_files": res.plan.send_files,
            "send_bytes": res.plan.send_bytes,
            "exists": res.plan.exists,
            "env_diff": res.plan.env_diff,
            "bashrc_diff": res.plan.bashrc_diff,
            "needed_bytes": res.plan.needed_bytes,
            "free_bytes": res.plan.free_bytes,
        }
    return out


def _result(row: dict, cmd: str) -> str:
    if row.get("skipped"):
        return "[yellow]skipped[/]"
    if not row.get("ok"):
        return "[red]failed[/]"
    if cmd == "push" and not row.get("dry_run"):
        if (row.get("health") or {}).get("status") == "passed":
            return "[green]healthy[/]"
        return "[green]applied[/]" if row.get("switched") else "[green]unchanged[/]"
    return "[green]ok[/]"


def print_recap(con: Console, rows: list[dict], cmd: str) -> None:
    """One row per board (result, release, bytes sent, seconds, error in one line) and the counts."""
    t = Table("board", "result", "release", "sent", "seconds", "detail", title=f"{cmd}: recap")
    for r in rows:
        sent = r.get("payload_bytes", r.get("bytes"))
        detail = str(r.get("error") or "")
        t.add_row(escape(r["board"]), _result(r, cmd), escape(r.get("release") or r.get("current") or ""),
                  _size(sent) if isinstance(sent, int) else "", f"{r['seconds']:.2f}" if "seconds" in r else "",
                  escape(detail[:120]))
    con.print(t)
    from ..fleet import recap

    c = recap(rows, cmd)
    line = f"targeted {c['targeted']}, ok {c['ok']}, failed {c['failed']}, skipped {c['skipped']}"
    if cmd == "push":
        line += f" (applied {c['applied']}, healthy {c['healthy']}, unchanged {c['unchanged']})"
    con.print(line)


def print_push(con: Console, res) -> None:
    unsafe = getattr(res, "unsafe_env", ())
    if res.dry_run:
        con.print(f"[bold]{escape(res.board)}[/]: dry run, nothing changed"
                  + (f"; [yellow]env sets {', '.join(unsafe)}[/] (app.env_unsafe)" if unsafe else ""))
        return
    what = "switched to" if res.switched else "already at"
    con.print(
        f"[green]pushed[/] [bold]{escape(res.board)}[/]: {what} release {escape(res.release)} "
        f"(sent {res.objects} files, {_size(res.payload_bytes)}; {res.linked} hard-linked; "
        f"target {res.target}, Python {escape(res.python)}; {res.seconds:.2f}s)"
        + (f"; pruned {escape(', '.join(res.pruned))}" if res.pruned else "")
        + (f"; [yellow]env sets {', '.join(unsafe)}[/] (app.env_unsafe)" if unsafe else "")
        + _health_note(res.health)
        + _service_note(getattr(res, "service", None))
    )


def _service_note(moved) -> str:
    if not moved:
        return ""
    if moved.get("moved"):
        return f"; service moved to {escape(moved['release'])}"
    return f"; [yellow]service not moved[/] (runs {escape(moved.get('release') or '-')}, {escape(moved.get('supervisor'))})"


def _health_note(h) -> str:
    if h is None or h.status == "skipped":
        return f"; [yellow]no health check[/] ({escape(h.reason)})" if h is not None and h.reason else ""
    if not h.ran:
        return "; health check passed on an earlier push"
    return f"; health check [green]passed[/] ({escape(h.source or h.probe)}, {h.seconds:.2f}s)"


def print_releases(con: Console, board: str, info) -> None:
    """``info``: a ``protocol.ReleasesReply``."""
    t = Table("release", "created", "current", "env", title=f"{board} releases")
    for r in info.releases:
        t.add_row(escape(r.id), _when(r.created), "[green]*[/]" if r.current else "", escape(env_text(r)))
    con.print(t)


def env_text(r) -> str:
    """The environment a release carries, one line: the inventory's variables (secrets masked on the board)
    and its env.sh's digest, so two releases that differ only there tell apart."""
    if not r.env_sha:
        return "no env.sh (pushed before env.sh was part of releases)"
    pairs = " ".join(f"{k}={v}" for k, v in sorted(r.env.items()))
    return f"{pairs or 'no app.env'} (env.sh {r.env_sha[:8]})"


# ---------------------------------------------------------------- run


def event_line(ev: dict) -> str:
    if ev["event"] == "result":
        label, score = _top1(ev)
        return f"  [green]ok[/]  {escape(ev['image'])}: {label} ({score})"
    return f"  [red]err[/] {escape(ev['image'])}: {escape(ev['kind'])}: {escape(ev['message'])}"


def run_json(res) -> dict:
    if res.summary.get("exit_status") is not None or res.kind == "command":
        return command_run_json(res)
    row = {
        "board": res.board,
        "ok": res.success,
        "run_id": res.run_id,
        "release": res.release,
        "images_ok": res.ok,
        "images_failed": res.failed,
        "total": res.total,
        "ended": res.ended,
        "agent_exit": res.exit_code,  # the agent's own status (0 ok, 2 partial, 1 failed): not this process's
        "reason": run_reason(res),
        "files_not_taken": res.summary.get("not_taken", 0),
        "summary": res.summary,
        "errors": [{"image": e["image"], "kind": e["kind"], "message": e["message"]} for e in res.errors],
        "seconds": round(res.seconds, 3),
    }
    if not res.success:
        row["exit_code"] = 1  # run_exit makes it 5 when the run ended with only some images failed
        if row["reason"]:
            row["error"] = f"{res.board}: run {res.run_id}: {row['reason']}"
    return row


def run_reason(res) -> str | None:
    """Why a run ended before its images were done (a full disk, a signal, the agent's own error), or None."""
    if not res.ended:
        return f"the run did not end: follow it with deploy run {res.board} --attach {res.run_id}"
    return res.summary.get("reason") or res.summary.get("error") or None


def command_run_json(res) -> dict:
    """An own app's run: its exit status, reason, duration and what it wrote."""
    s = res.summary
    row = {"board": res.board, "ok": res.success, "run_id": res.run_id, "release": res.release, "kind": "command",
           "ended": res.ended, "exit_status": s.get("exit_status"), "signal": s.get("signal"),
           "reason": s.get("reason"), "duration_s": s.get("elapsed_s"), "output_bytes": s.get("output_bytes"),
           "outputs": s.get("outputs"), "run_tree_s": s.get("run_tree_s"), "summary": s,
           "seconds": round(res.seconds, 3)}
    if not res.success:
        row["error"] = f"{res.board}: run {res.run_id}: " + (s.get("reason") or "the run did not end (deploy run "
                                                              f"{res.board} --attach {res.run_id})")
    return row


def print_command_run(con: Console, res) -> None:
    s = res.summary
    if res.success:
        what = f"[green]the command exited 0[/] ({s.get('elapsed_s', 0):.1f}s"
        what += f", {_size(s.get('output_bytes') or 0)} under {escape(str(s['outputs']))})" if s.get("outputs") else ")"
    else:
        what = f"[red]failed[/]: {escape(str(s.get('reason') or 'the run did not end'))}"
    con.print(f"run {res.run_id} on [bold]{escape(res.board)}[/]: {what} (release {res.release or '?'}); "
              f"pull with: deploy pull {escape(res.board)} --run {res.run_id}")


def log_line(board: str | None, ev: dict) -> str:
    """One line an own app printed, as rich markup: board-prefixed with several boards, stderr dimmed red."""
    text = escape(str(ev.get("message", "")))
    prefix = f"[bold]{escape(board)}[/]: " if board else ""
    return prefix + (f"[red]{text}[/]" if ev.get("stream") == "stderr" else text)


def print_run(con: Console, res) -> None:
    if res.summary.get("exit_status") is not None or res.kind == "command":
        print_command_run(con, res)
        return
    if res.summary.get("bench"):
        print_bench(con, res)
        return
    colour = "green" if res.success else ("yellow" if res.ok else "red")
    ips = res.summary.get("ips")
    rate = f", {ips:.1f} img/s" if isinstance(ips, (int, float)) else ""
    con.print(
        f"[{colour}]run {escape(res.run_id)}[/] on [bold]{escape(res.board)}[/]: {res.ok} ok, {res.failed} failed"
        f"{rate} (release {escape(res.release or '?')}); pull with: deploy pull {escape(res.board)} --run "
        f"{escape(res.run_id)}"
    )
    skipped = res.summary.get("not_taken_files") or []
    if skipped:
        names = ", ".join(f"{n['file']} ({n['reason']})" for n in skipped[:5])
        more = f" and {res.summary['not_taken'] - 5} more (--json lists {len(skipped)})" if res.summary["not_taken"] > 5 else ""
        con.print(f"  [yellow]{res.summary['not_taken']} files not taken[/]: {escape(names)}{more}", soft_wrap=True)
    why = run_reason(res) if not res.success else None
    if why:
        more = (f"; finished images are kept: deploy run {escape(res.board)} --resume {res.run_id}"
                if res.ended and res.total else "")
        con.print(f"[red]run {res.run_id} ended[/]: {escape(why)}{more}", soft_wrap=True)


def print_bench(con: Console, res) -> None:
    """``deploy run --mode bench``: pure inference per batch size (on the acl backend sync and async side by side)."""
    doc = {"board": res.board, "backend": res.summary.get("backend"), "rows": res.summary["bench"],
           "unsupported": res.summary.get("unsupported", [])}
    print_bench_docs(con, [doc], f"{res.board} bench {res.run_id}")
    colour = "green" if res.success else "red"
    backend = res.summary.get("backend")
    name = backend.get("backend", "?") if isinstance(backend, dict) else "?"
    con.print(f"[{colour}]bench {escape(res.run_id)}[/] on [bold]{escape(res.board)}[/]: {escape(name)} backend, "
              f"release {escape(res.release or '?')} (warm-up excluded; latency per call, async: from submit to callback)")


def print_bench_docs(con: Console, docs: list[dict], title: str) -> None:
    """One table of bench rows, a board's rows after another's (``deploy bench``, ``deploy run --mode bench``):
    img/s and latency mean / p50 / p90 / p99 per batch size; sizes a board could not run are listed with why."""
    t = Table("board", "backend", "batch", "mode", "img/s", "mean ms", "p50", "p90", "p99", title=escape(title))
    for d in docs:
        backend = d.get("backend")
        name = escape(backend.get("backend", "?") if isinstance(backend, dict) else "?")
        for r in _dicts(d.get("rows")):
            lat = r.get("latency_ms") if isinstance(r.get("latency_ms"), dict) else {}
            t.add_row(escape(d["board"]), name, _num(r.get("batch"), "d"), escape(r.get("mode") or "-"),
                      _num(r.get("throughput"), ".1f"), *(_num(lat.get(k), ".2f") for k in ("mean", "median", "p90", "p99")))
        for u in _dicts(d.get("unsupported")):
            t.add_row(escape(d["board"]), name, _num(u.get("batch"), "d"), "-", "[yellow]n/a[/]", "", "", "", "")
    con.print(t)
    for d in docs:
        for u in _dicts(d.get("unsupported")):
            con.print(f"{escape(d['board'])}: batch {_num(u.get('batch'), 'd')} not run: {escape(u.get('reason'))}")


def _dicts(value) -> list[dict]:
    """The dicts of a list a board sent (a bench's rows): anything else is left out."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


# ---------------------------------------------------------------- pull


def pull_json(res) -> dict:
    return {"board": res.board, "ok": True, "run_id": res.run_id, "path": str(res.path), "files": res.files,
            "bytes": res.bytes, "seconds": round(res.seconds, 3)}


def print_pull(con: Console, res) -> None:
    path = Path(res.path)
    results = path / "results.jsonl"
    if results.exists():
        t = Table("image", "top-1", "score", "status", title=f"{escape(res.board)} run {escape(res.run_id)}")
        for line in results.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if not isinstance(rec, dict):
                continue
            if rec.get("ok"):
                t.add_row(escape(rec.get("image")), *_top1(rec), "[green]ok[/]")
            else:
                t.add_row(escape(rec.get("image")), "", "", f"[red]{escape(rec.get('kind'))}[/]")
        con.print(t)
    elif (path / "outputs").is_dir():  # an own app's run: what it wrote under app.outputs
        t = Table("file", "size", title=f"{escape(res.board)} run {escape(res.run_id)}: outputs/")
        for f in sorted(p for p in (path / "outputs").rglob("*") if p.is_file()):
            t.add_row(escape(f.relative_to(path / "outputs").as_posix()), _size(f.stat().st_size))
        con.print(t)
    con.print(f"pulled {res.files} files ({_size(res.bytes)}) into {escape(path)}")


# ---------------------------------------------------------------- status


def print_status(con: Console, board: str, info) -> None:
    """``info``: a ``protocol.StatusReply``."""
    facts = info.facts
    blocks = info.bashrc_blocks
    block = "[green]present[/]" if blocks == 1 else ("[red]missing[/]" if blocks == 0 else f"[red]{blocks} copies[/]")
    con.print(
        f"[bold]{escape(board)}[/] ({escape(facts.arch)}, Python {escape(facts.python)}, {escape(facts.os)}, "
        f"{_size(facts.free_bytes)} free)\n  current release: {escape(info.current or 'none')}; "
        f"releases: {len(info.releases)}; env.sh: {'yes' if info.env_sh else 'no'}; .bashrc block: {block}"
    )
    current = next((r for r in info.releases if r.current), None)
    if current is not None:
        con.print(f"  env: {escape(env_text(current))}", highlight=False, soft_wrap=True)
    if getattr(info, "service", None) is not None:
        con.print("  " + escape(service_line(info.service)), soft_wrap=True)
    if info.runs:
        t = Table("run", "status", "ok", "failed", "img/s", "reason", title="last runs")
        for r in info.runs:
            s = r.summary or {}
            t.add_row(escape(r.id), escape(r.status or "-"), escape(s.get("ok", "-")), escape(s.get("failed", "-")),
                      _num(s.get("ips"), ".1f"), escape(str(s.get("reason") or "")[:120]))
        con.print(t)


# ---------------------------------------------------------------- service


def _ago(t: float | None) -> str:
    if not t:
        return "-"
    s = max(0, time.time() - t)
    return f"{s:.0f}s" if s < 120 else (f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h")


def service_line(info) -> str:
    """One line for ``deploy status`` and ``deploy service status`` (plain text, no markup); ``info``: a
    ``protocol.ServiceInfo``."""
    if info is None or not info.method:
        return "service: none"
    if not info.enabled:
        return f"service: stopped ({info.ok} ok, {info.failed} failed; journal {info.seq}, collected {info.acked})"
    state = info.state or "-"
    if info.supervisor in ("backoff", "crash-loop", "dead"):
        state = info.supervisor
    mb = 1 << 20
    up = f"up {_ago(info.since)}" if info.agent_pid else "agent not running"
    line = (f"service: {state} ({info.method}), release {info.release or '-'}, {up}; "
            f"done {info.ok}, failed {info.failed}, waiting {info.waiting}, {info.ips:.1f} img/s; "
            f"disk {info.disk_used / mb:.1f}/{info.max_disk / mb:.0f} MiB; journal {info.seq}, collected {info.acked}")
    if info.restarts:
        line += f"; restarts {info.restarts}"
    if info.reason:
        line += f"; {info.reason}"
    if info.last_error:
        line += f"; last error: {info.last_error}"
    if info.note:
        line += f"; note: {info.note}"
    return line
