"""``deploy bench`` against ``benchmarks/agent.py``'s pure figure, and ``deploy verify``'s cost, same run.

    python benchmarks/quality.py [--json] [--batch 1,4] [--rounds 4] [--loop 100]

Starts its own sandbox board (board1, onnx, the demo model) in a throwaway project and stops exactly that
board at the end. Per batch size, ``--rounds`` interleaved rounds of:

* ``deploy_bench_ips``  ``deploy bench board1 --batch B --loop L --json``: the agent's bench on the board
                        (one ORT stream, intra-op threads = cores, busy-wait on), 1000 x B / mean latency;
* ``pure_ips``          ``benchmarks/agent.py``'s pure figure of the same configuration (``1xN_spin``,
                        ``agent.pure_configs``) on the same model and batch, in this process;

each the best of the rounds, and ``ratio`` = deploy / pure (the issue asks for 0.9-1.1). On a shared
machine one quiet moment can lift either best alone, so ``ratio_paired_median`` is the median of the
per-round ratios (each round's two figures measured back to back, under the same neighbours). Then ``deploy verify board1`` on the demo images:
its wall time next to the board's part (run + pull) and the host's fp32 reference, which run at once.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.testing import DEMO, Project, build_demo, rounded  # noqa: E402

# benchmarks/agent.py under another name (``agent`` is the agent package it imports)
_spec = importlib.util.spec_from_file_location("bench_agent", Path(__file__).resolve().parent / "agent.py")
agent_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(agent_bench)


def _rows(doc):
    return doc["boards"] if isinstance(doc, dict) else doc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--batch", default="1,4")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--loop", type=int, default=100)
    args = p.parse_args()
    sizes = [int(b) for b in args.batch.split(",")]
    demo = build_demo(DEMO)
    model = demo / "models" / "efficientnet_lite0.onnx"
    name, (options, streams) = next(iter(agent_bench.pure_configs(0).items()))  # 1xN_spin: the agent's bench
    out = {"config": name, "batches": {}, "rounds": args.rounds, "loop": args.loop}
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        proj = Project(Path(tmp), demo)
        proj.up()
        try:
            proj.deploy("push", "board1", "--no-health-check")
            for b in sizes:
                ours, pure = [], []
                for _ in range(args.rounds):
                    doc = proj.deploy_json("bench", "board1", "--batch", str(b), "--loop", str(args.loop))
                    ours.append(_rows(doc)[0]["rows"][0]["throughput"])
                    backend = agent_bench.get_backend("onnx", **options).load(str(model))
                    try:
                        pure.append(agent_bench._timed_streams(backend, b, max(1, args.loop), streams))
                    finally:
                        backend.close()
                out["batches"][b] = {"deploy_bench_ips": max(ours), "pure_ips": max(pure),
                                     "ratio": max(ours) / max(pure),
                                     "ratio_paired_median": statistics.median(o / q for o, q in zip(ours, pure, strict=True)),
                                     "samples": {"deploy": ours, "pure": pure}}
            t0 = time.perf_counter()
            row = _rows(proj.deploy_json("verify", "board1"))[0]
            out["verify"] = {"seconds": time.perf_counter() - t0, "board_seconds": row["board_seconds"],
                             "host_seconds": row["host_seconds"], "images": row["compared"]}
        finally:
            proj.down()
    out = rounded(out)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for b, r in out["batches"].items():
            print(f"batch {b}: deploy bench {r['deploy_bench_ips']} img/s, pure {r['pure_ips']} img/s "
                  f"({out['config']}): {r['ratio']} (paired rounds, median: {r['ratio_paired_median']})")
        v = out["verify"]
        print(f"verify: {v['seconds']} s (board run+pull {v['board_seconds']} s, host {v['host_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
