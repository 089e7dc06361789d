"""``report.html`` and ``contact_sheet.png`` for a pulled run: what people look at, not only JSON.

One self-contained page per run (``outputs/<board>/<run>/report.html``): every picture is embedded as a
``data:`` URI, there is no script and nothing is fetched, so the page opens from a mail attachment or an
air-gapped lab PC exactly as here. It shows the run's figures and timings, a contact sheet of the labelled
thumbnails (also written beside it as ``contact_sheet.png``), top-1 counts per class, the failed images
with their reasons, and the verify / bench / eval results when those commands left them in the run
directory. Several boards get one more page with them side by side (:func:`write_fleet`).

Every text that came from a board or a file name is HTML-escaped. Files are written to a temporary name
and renamed, so a report is whole or absent.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from agent.formats import labelled_rel

THUMB = 160
SHEET_COLUMNS = 6
MAX_THUMBS = 120  # a page stays small; the sheet says how many more there were
CSS = """
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#17702b}.bad{color:#b3261e}.grid{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:170px;font-size:.8em}figure img{width:160px;height:auto;border:1px solid #ccc}
.figures{display:flex;gap:2em;flex-wrap:wrap}.figures div{font-size:1.3em}.figures small{display:block;color:#666;font-size:.6em}
"""


@dataclass(frozen=True)
class RunData:
    """What a pulled run directory holds, read once."""

    path: Path
    board: str
    run_id: str
    summary: dict
    job: dict
    results: list[dict]
    verify: dict | None = None
    bench: dict | None = None
    eval: dict | None = None
    extra: dict = field(default_factory=dict)


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_run(path: Path, board: str) -> RunData:
    results = []
    try:
        for line in (path / "results.jsonl").read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "image" in rec:
                results.append(rec)
    except OSError:
        pass
    return RunData(path=path, board=board, run_id=path.name, summary=_json(path / "summary.json") or {},
                   job=_json(path / "job.json") or {}, results=results, verify=_json(path / "verify.json"),
                   bench=_json(path / "bench.json"), eval=_json(path / "result.json"))


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _data_uri(data: bytes, kind: str) -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------- thumbnails and the contact sheet


def _labelled(run: RunData, image: str) -> Path | None:
    p = run.path / "labelled" / labelled_rel(image)  # the agent's own rule (a too-long name is cut)
    return p if p.is_file() else None


def _caption(rec: dict) -> str:
    if not rec.get("ok"):
        return f"{rec.get('kind', 'error')}"
    top = rec["topk"][0] if rec.get("topk") else [None, "?", 0.0]
    return f"{top[1]} ({float(top[2]):.1%})"


def _thumb(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((THUMB, THUMB))
        return im


def contact_sheet(run: RunData, out: Path) -> tuple[Path | None, list[tuple[str, str, bytes | None]]]:
    """``contact_sheet.png`` (a grid of labelled thumbnails with captions) and the thumbnails as JPEG bytes
    (image, caption, bytes or None when the board wrote no labelled copy)."""
    from PIL import Image, ImageDraw, ImageFont

    shown = run.results[:MAX_THUMBS]
    thumbs = []
    for rec in shown:
        src = _labelled(run, rec["image"]) if rec.get("ok") else None
        im = None
        if src is not None:
            try:
                im = _thumb(src)
            except OSError:
                im = None
        thumbs.append((rec["image"], _caption(rec), im))
    if not thumbs:
        return None, []
    font_path = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    try:
        font = ImageFont.truetype(font_path, 11)
    except OSError:
        font = ImageFont.load_default()
    cell_w, cell_h = THUMB + 10, THUMB + 34
    cols = min(SHEET_COLUMNS, len(thumbs))
    rows = (len(thumbs) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    out_thumbs = []
    for i, (name, caption, im) in enumerate(thumbs):
        x, y = (i % cols) * cell_w + 5, (i // cols) * cell_h + 5
        data = None
        if im is not None:
            sheet.paste(im, (x + (THUMB - im.size[0]) // 2, y + (THUMB - im.size[1]) // 2))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=80)
            data = buf.getvalue()
        else:
            draw.rectangle([x, y, x + THUMB - 1, y + THUMB - 1], outline=(180, 40, 30))
        draw.text((x, y + THUMB + 2), name[-28:], fill=(60, 60, 60), font=font)
        draw.text((x, y + THUMB + 16), caption[:30], fill=(20, 20, 20), font=font)
        out_thumbs.append((name, caption, data))
    buf = io.BytesIO()
    sheet.save(buf, "PNG", optimize=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(out, buf.getvalue())
    return out, out_thumbs


# ---------------------------------------------------------------- sections


def _table(headers: list[str] | None, rows: list[list], num: set[int] = frozenset()) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr>" if headers else ""
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i in num else ''}>{c}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table>{head}{body}</table>"


def _figure(label: str, value) -> str:
    return f"<div>{_e(value)}<small>{_e(label)}</small></div>"


def class_counts(run: RunData) -> list[tuple[str, int]]:
    c = Counter(str(r["topk"][0][1]) for r in run.results if r.get("ok") and r.get("topk"))
    return sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))


def _summary_section(run: RunData) -> str:
    s = run.summary
    t = s.get("timings_s") or {}
    ok = sum(1 for r in run.results if r.get("ok"))
    failed = len(run.results) - ok
    figs = [("images classified", ok), ("failed", failed), ("total", s.get("total", len(run.results))),
            ("img/s", f"{s.get('ips', 0):.1f}"), ("elapsed s", s.get("elapsed_s", "-")),
            ("status", s.get("status", "-"))]
    timing_rows = [[_e(k.replace("_", " ")), _e(v)] for k, v in t.items()]
    infer = [r for r in _events(run) if r.get("event") == "result" and isinstance(r.get("ms"), dict)]
    if infer:
        for key in ("decode", "infer"):
            vals = sorted(float(e["ms"].get(key, 0)) for e in infer)
            timing_rows.append([f"{key} ms per image (mean / p50 / max)",
                                f"{sum(vals) / len(vals):.2f} / {vals[len(vals) // 2]:.2f} / {vals[-1]:.2f}"])
    job = run.job
    setup = [["backend", _e(job.get("backend", "-"))], ["model", _e(job.get("model", "-"))],
             ["batch", _e(s.get("batch", job.get("batch", "-")))], ["mode", _e(job.get("mode", "-"))],
             ["preprocess", _e(json.dumps(job.get("preprocess", {})))]]
    return ("<h2>Summary</h2><div class=figures>" + "".join(_figure(k, v) for k, v in figs) + "</div>"
            + "<h2>Timings</h2>" + _table(["what", "value"], timing_rows or [["-", "-"]], {1})
            + "<h2>Run</h2>" + _table(None, setup))


def _events(run: RunData) -> list[dict]:
    out = []
    try:
        for line in (run.path / "events.jsonl").read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    except OSError:
        pass
    return out


def _failed_section(run: RunData) -> str:
    bad = [r for r in run.results if not r.get("ok")]
    if not bad:
        return "<h2>Failed images</h2><p class=ok>none</p>"
    rows = [[_e(r["image"]), _e(r.get("kind", "")), _e(r.get("message", ""))] for r in bad]
    return "<h2>Failed images</h2>" + _table(["image", "kind", "reason"], rows)


def _classes_section(run: RunData, chart: bytes | None) -> str:
    counts = class_counts(run)
    if not counts:
        return ""
    img = f"<p><img alt='top-1 classes' src='{_data_uri(chart, 'image/png')}'></p>" if chart else ""
    return "<h2>Top-1 per class</h2>" + img + _table(["class", "images"], [[_e(k), v] for k, v in counts], {1})


def _sheet_section(thumbs, sheet: Path | None) -> str:
    if not thumbs:
        return ""
    figs = []
    for name, caption, data in thumbs:
        img = f"<img alt='{_e(name)}' src='{_data_uri(data, 'image/jpeg')}'>" if data else "<div>(no labelled copy)</div>"
        figs.append(f"<figure>{img}<figcaption><b>{_e(caption)}</b><br>{_e(name)}</figcaption></figure>")
    note = f"<p>Also as <a href='{_e(sheet.name)}'>{_e(sheet.name)}</a>.</p>" if sheet else ""
    return "<h2>Contact sheet</h2>" + note + "<div class=grid>" + "".join(figs) + "</div>"


def _verify_section(v: dict | None, chart: bytes | None) -> str:
    if not v:
        return ""
    verdict = "<span class=ok>passed</span>" if v.get("passed") else "<span class=bad>FAILED</span>"
    figs = [("top-1 agreement", f"{v['agreement']:.1%}"), ("top-5 overlap", f"{v['top5_overlap']:.1%}"),
            ("max |Δp|", f"{v['max_abs_diff']:.3g}"), ("mean |Δp|", f"{v['mean_abs_diff']:.3g}"),
            ("images compared", v["compared"]), ("threshold", f"{v['min_agreement']:.0%}")]
    rows = []
    for i in v.get("images", []):
        mark = "<span class=ok>yes</span>" if i["agree"] else "<span class=bad>NO</span>"
        host = i["host"][1] if len(i.get("host") or []) > 1 else ""
        board = i["board"][1] if len(i.get("board") or []) > 1 else ""
        rows.append([_e(i["image"]), mark, _e(host), _e(board), f"{i['top5_overlap']:.0%}",
                     f"{i['max_abs_diff']:.3g}", f"{i['mean_abs_diff']:.3g}", _e(i.get("error", ""))])
    img = f"<p><img alt='verify' src='{_data_uri(chart, 'image/png')}'></p>" if chart else ""
    if not chart and v.get("compared") and not v.get("max_abs_diff"):
        img = "<p>The board's probabilities are identical to the host's (same runtime, same precision).</p>"
    return (f"<h2>Verify: board vs host fp32 reference ({verdict})</h2><div class=figures>"
            + "".join(_figure(k, val) for k, val in figs) + "</div>" + img
            + _table(["image", "top-1 agrees", "host top-1", "board top-1", "top-5 overlap", "max |Δp|", "mean |Δp|",
                      "error"], rows, {4, 5, 6}))


def _bench_section(b: dict | None, chart: bytes | None) -> str:
    if not b:
        return ""
    rows = []
    for r in b.get("rows", []):
        lat = r.get("latency_ms", {})
        rows.append([r["batch"], _e(r.get("mode") or "-"), f"{r['throughput']:.1f}",
                     *(f"{lat.get(k, 0):.2f}" for k in ("mean", "median", "p90", "p99"))])
    for u in b.get("unsupported", []):
        rows.append([u["batch"], "-", _e(f"not run: {u['reason']}"), "", "", "", ""])
    img = f"<p><img alt='bench' src='{_data_uri(chart, 'image/png')}'></p>" if chart else ""
    return ("<h2>Bench: pure inference per batch size (warm-up excluded)</h2>" + img
            + _table(["batch", "mode", "img/s", "mean ms", "p50 ms", "p90 ms", "p99 ms"], rows, {0, 2, 3, 4, 5, 6}))


def _eval_section(e: dict | None) -> str:
    if not e:
        return ""
    rows = [[_e(kv["key"]), _e(kv["value"])] for kv in e.get("value", [])]
    return f"<h2>Eval: {_e(e.get('title', ''))}</h2>" + _table(None, rows, {1})


def _page(title: str, body: str) -> bytes:
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body>{body}<p><small>written by deploy report, "
            f"{_e(time.strftime('%Y-%m-%d %H:%M:%S'))}</small></p></body></html>").encode()


def _png(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def write_run(run: RunData) -> Path:
    """``report.html`` and ``contact_sheet.png`` in the run directory; returns the page's path."""
    from . import charts

    sheet, thumbs = contact_sheet(run, run.path / "contact_sheet.png")
    counts = class_counts(run)
    class_png = verify_png = None
    if counts:
        class_png = _png(charts.class_chart(counts, run.path / "classes.png", f"{run.board}: top-1 classes"))
    if run.verify and any(i["max_abs_diff"] > 0 for i in run.verify.get("images", [])):  # all 0: nothing to draw
        verify_png = _png(charts.verify_chart(run.verify["images"], run.path / "verify.png",
                                              f"{run.board}: board vs host fp32"))
    body = (f"<h1>{_e(run.board)}: run {_e(run.run_id)}</h1>"
            + _verify_section(run.verify, verify_png) + _eval_section(run.eval)
            + _bench_section(run.bench, _png(run.path / "bench.png"))
            + (_summary_section(run) if run.results or not run.bench else "")
            + _sheet_section(thumbs, sheet) + _classes_section(run, class_png) + _failed_section(run))
    out = run.path / "report.html"
    _write(out, _page(f"{run.board} {run.run_id}", body))
    return out


def write_fleet(runs: list[RunData], out: Path) -> Path:
    """One page with the boards side by side: a column per board, links to each board's own report."""
    heads = ["", *(r.board for r in runs)]

    def row(label, fn):
        return [_e(label), *(fn(r) for r in runs)]

    def v(r, key, fmt):
        return fmt(r.verify[key]) if r.verify and key in r.verify else "-"

    def ev(r, key):
        for kv in (r.eval or {}).get("value", []):
            if kv["key"] == key:
                return _e(kv["value"])
        return "-"

    def best(r):
        rows = (r.bench or {}).get("rows") or []
        if not rows:
            return "-"
        b = max(rows, key=lambda x: x["throughput"])
        return f"{b['throughput']:.1f} (batch {b['batch']})"

    rows = [
        row("run", lambda r: f"<a href='{_e(os.path.relpath(r.path / 'report.html', out.parent))}'>{_e(r.run_id)}</a>"),
        row("backend", lambda r: _e(r.job.get("backend", "-"))),
        row("images ok / failed", lambda r: f"{sum(1 for x in r.results if x.get('ok'))} / "
                                            f"{sum(1 for x in r.results if not x.get('ok'))}"),
        row("img/s", lambda r: f"{r.summary.get('ips', 0):.1f}"),
        row("verify", lambda r: v(r, "passed", lambda p: "<span class=ok>passed</span>" if p else "<span class=bad>FAILED</span>")),
        row("top-1 agreement", lambda r: v(r, "agreement", lambda x: f"{x:.1%}")),
        row("max |Δp|", lambda r: v(r, "max_abs_diff", lambda x: f"{x:.3g}")),
        row("eval top-1", lambda r: ev(r, "Top1 accuracy")),
        row("eval top-5", lambda r: ev(r, "Top5 accuracy")),
        row("bench best img/s", best),
    ]
    chart = _png(out.parent / "bench.png")
    img = f"<p><img alt='bench' src='{_data_uri(chart, 'image/png')}'></p>" if chart else ""
    body = "<h1>Boards side by side</h1>" + _table(heads, rows) + img
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(out, _page("boards side by side", body))
    return out
