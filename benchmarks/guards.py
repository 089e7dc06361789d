"""What the host's guards cost (issue 23): a no-change push and a pull of a run with 5,000 results.

    python benchmarks/guards.py [--json] [--repeat 7] [--results 5000] [--keep-tmp] [--against DIR]

Starts its own sandbox board in a throwaway project (stopped by PID at the end, in a ``finally``), pushes
the app once, then times, as a user types them (subprocesses, best and median of ``--repeat`` interleaved
rounds):

* ``push_s``   ``python -m deploy push board1`` with nothing changed (payload 0, no health check again);
* ``pull_s``   ``python -m deploy pull board1 --run big`` of a run directory made on the board with
               ``--results`` records in ``results.jsonl`` and ``events.jsonl`` and one labelled JPEG copy per
               image (``labelled/``, ~6 KiB each): the table of every result is printed (stdout to a file);
* ``pull_json_s`` the same pull with ``--json`` (no table).

The script only drives the CLI, so the same file measures any checkout. ``--against DIR`` measures the
checkout at DIR too, in the same rounds (a second project and sandbox board whose commands run with
``PYTHONPATH=DIR``, so the board code travels from there as well), alternating the two per sample: on a
shared machine that is the only fair comparison. Its figures are ``against_*`` and the ratios ``*_ratio``
(this checkout over DIR).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from deploy.testing import DEMO, Project


def make_run(home: Path, app: str, n: int, run_id: str = "big") -> int:
    """A finished run of ``n`` images under the board's ``runs/``, as the agent leaves one; its size in bytes."""
    run = home / "HIAI_PROJECTS" / app / "runs" / run_id
    shutil.rmtree(run, ignore_errors=True)
    (run / "labelled").mkdir(parents=True)
    buf = io.BytesIO()
    Image.new("RGB", (96, 96), (200, 120, 40)).save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    results, events = [], []
    for i in range(n):
        rec = {"image": f"img{i:05d}.jpg", "ok": True, "topk": [[281, "tabby", 0.91], [282, "tiger cat", 0.05]],
               "ms": 3.1}
        results.append(json.dumps(rec))
        events.append(json.dumps({"v": 1, "event": "result", **rec}))
        (run / "labelled" / f"img{i:05d}.jpg").write_bytes(jpeg)
    (run / "results.jsonl").write_text("\n".join(results) + "\n")
    (run / "events.jsonl").write_text("\n".join(events) + "\n")
    (run / "summary.json").write_text(json.dumps({"status": "ok", "ok": n, "failed": 0, "ips": 100.0}))
    (run / "job.json").write_text(json.dumps({"v": 1, "mode": "run"}))
    owner = run.parent.parent.stat()
    for p in [run.parent, *run.rglob("*"), run]:
        shutil.chown(p, owner.st_uid, owner.st_gid)
    return sum(p.stat().st_size for p in run.rglob("*") if p.is_file())


def timed(project: Project, *args: str) -> float:
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w") as out:
        r = project.deploy(*args)
        out.write(r.stdout)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--results", type=int, default=5000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument("--against", type=Path, help="another checkout, measured in the same rounds")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-guards-"))
    projects = {"": Project(root / "this", DEMO)}
    if args.against:
        projects["against_"] = Project(root / "against", DEMO)
        projects["against_"].environ["PYTHONPATH"] = str(args.against.resolve())
    samples: dict[str, list[float]] = {}
    try:
        for project in projects.values():
            project.up()
            project.deploy("push", "board1")
            size = make_run(project.home, project.app, args.results)
        for _ in range(args.repeat):
            for key, cmd in (("push_s", ("push", "board1")), ("pull_s", ("pull", "board1", "--run", "big")),
                             ("pull_json_s", ("pull", "board1", "--run", "big", "--json"))):
                for prefix, project in projects.items():
                    samples.setdefault(prefix + key, []).append(timed(project, *cmd))
    finally:
        for project in projects.values():
            project.down()
        if not args.keep_tmp:
            shutil.rmtree(root, ignore_errors=True)
    out = {"results": args.results, "run_bytes": size, "samples": samples,
           **{f"best_{k}": round(min(v), 3) for k, v in samples.items()},
           **{f"median_{k}": round(statistics.median(v), 3) for k, v in samples.items()}}
    if args.against:
        out.update({f"{k}_ratio": round(min(v) / min(samples["against_" + k]), 3)
                    for k, v in samples.items() if not k.startswith("against_")})
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k in samples:
            print(f"{k}: best {out['best_' + k]:.3f} s, median {out['median_' + k]:.3f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
