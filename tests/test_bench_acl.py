"""benchmarks/agent.py --backend acl at tiny sizes: one JSON object with every figure, each a
sane positive number (no timing thresholds: the machine is shared)."""

import json
import subprocess
import sys

import aclsim

BENCH = aclsim.REPO / "benchmarks" / "agent.py"
MODES = {"sync", "async", "sync_dvpp", "async_dvpp"}  # JPEGs decoded on the CPU and on DVPP


def test_acl_benchmark_prints_its_figures_as_one_json_object():
    aclsim.require_demo_model()
    argv = ["--backend", "acl", "--json", "--copies", "1", "--scales", "1", "--repeat", "1"]
    argv += ["--loop", "5", "--min-images", "8", "--device-ms", "2", "--sweep", "4"]
    proc = subprocess.run(
        [sys.executable, str(BENCH), *argv], capture_output=True, text=True, timeout=120, cwd=str(aclsim.REPO)
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)
    assert 0 < r["acl_sim_over_onnx"] < 10
    assert r["acl_sim_pure_ips"] > 0 and r["onnx_pure_ips"] > 0
    assert r["npu_ms_per_image"] == 2 and r["npu_pure_ips"] == 500.0
    for figures in (r["npu_e2e_over_pure"], r["npu_e2e_ips"], r["npu_e2e_cpu_ms_per_image"]):
        assert set(figures) == MODES and all(v > 0 for v in figures.values())
    assert all(0 < v <= 1.05 for v in r["npu_e2e_over_pure"].values())  # cannot beat the device
    assert [row["ms"] for row in r["npu_sweep"]] == [4, 2]
    for row in r["npu_sweep"]:
        assert row["pure_ips"] == 1000.0 / row["ms"] and all(row[f"{m}_ips"] > 0 for m in MODES)
    assert set(r["npu_below_0.9_at_ms"]) == MODES
    assert set(r["targets"]) == {f"npu_e2e_over_pure[{m}]>=0.95" for m in MODES}
    assert r["dvpp_cpu_fallbacks"] == {"sync_dvpp": {}, "async_dvpp": {}}
    assert r["images"] == 8 and r["batch"] == 1
