"""Charts for people (host side only): matplotlib with the Agg backend, imported when a chart is drawn.

matplotlib costs ~0.3 s to import, so nothing imports this module before a command has a chart to draw,
and ``Agg`` (no display, no GUI toolkit) makes it work over SSH and in CI. Files are written to a
temporary name and renamed: a chart is either whole or absent.
"""

from __future__ import annotations

import os
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def bench_chart(series: dict[str, list[dict]], path: Path, title: str = "deploy bench") -> Path:
    """Throughput (img/s) and p99 latency (ms) against batch size, a line per board (and per mode).

    ``series``: board -> bench rows as the agent writes them (``batch``, ``throughput``,
    ``latency_ms.p99``, optional ``mode``: the acl backend's sync and async are separate lines).
    """
    plt = _plt()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    batches = sorted({r["batch"] for rows in series.values() for r in rows})
    for board, rows in series.items():
        for mode in sorted({r.get("mode") or "" for r in rows}):
            pts = sorted((r["batch"], r["throughput"], r["latency_ms"]["p99"]) for r in rows
                         if (r.get("mode") or "") == mode)
            if not pts:
                continue
            name = f"{board} {mode}".strip()
            xs = [p[0] for p in pts]
            ax1.plot(xs, [p[1] for p in pts], marker="o", label=name)
            ax2.plot(xs, [p[2] for p in pts], marker="o", label=name)
    for ax, ylabel in ((ax1, "throughput (img/s)"), (ax2, "p99 latency per batch (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches)  # the sizes measured, as plain numbers (not 2^k)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    ax1.set_ylim(bottom=0)
    ax2.set_ylim(bottom=0)
    fig.suptitle(title)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def class_chart(counts: list[tuple[str, int]], path: Path, title: str = "top-1 classes") -> Path:
    """A horizontal bar per class (most frequent first, at most 20)."""
    plt = _plt()
    counts = counts[:20]
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(3, len(counts)) + 0.8))
    names = [c[0][:40] for c in counts][::-1]
    ax.barh(names, [c[1] for c in counts][::-1], color="#4878a8")
    ax.set_xlabel("images")
    ax.set_title(title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def verify_chart(images: list[dict], path: Path, title: str = "board vs host") -> Path:
    """Max and mean |Δ probability| per image (log scale: fp16 differences are ~1e-4)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    names = [i["image"][-24:] for i in images]
    xs = range(len(names))
    floor = 1e-9  # a log axis cannot show 0 (identical outputs): drawn at the floor
    ax.bar([x - 0.2 for x in xs], [max(i["max_abs_diff"], floor) for i in images], width=0.4, label="max |Δp|")
    ax.bar([x + 0.2 for x in xs], [max(i["mean_abs_diff"], floor) for i in images], width=0.4, label="mean |Δp|")
    ax.set_yscale("log")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize="small")
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
