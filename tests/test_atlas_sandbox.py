"""The simulated Atlas 200 DK: a sandbox board shaped like the DK (HwHiAiUser, Ubuntu 18.04's python3
beside CANN's Python 3.7, CANN's set_env.sh, npu-smi) running the agent's acl backend on the simulated
pyACL, end to end through the CLI: sandbox up, check, model convert --simulate, push, run, pull.

The x86_64 board (``arch: x86_64``) is the fast one: where the machine has pyenv's CPython 3.6 and 3.7,
``python3`` is the real 3.6 and the DK's interpreter the real 3.7, so the release is the cp37 set and
the Python 3.7 agent truly runs. The aarch64 one (qemu-user rootfs, slow marker) is the faithful arch;
its rootfs has only Python 3.9, which stands in for 3.7 and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from deploy.sandbox import atlas
from deploy.testing import CAT, ESPRESSO, ROCKET, Project, ssh_argv, top1

ROOT = os.geteuid() == 0
HAVE_37 = atlas.find_cpython("3.7") is not None
HAVE_36 = atlas.find_cpython("3.6") is not None


def convert(project: Project, name: str = "eff") -> Path:
    """The demo model through `deploy model convert --simulate`, with the app's preprocessing as AIPP."""
    out = project.root / "models" / name
    project.deploy("model", "convert", str(project.demo / "models" / "efficientnet_lite0.onnx"), "--target",
                   "atlas200dk", "--aipp", "app", "-o", str(out), "--simulate")
    return out.with_suffix(".om")


def board_ssh(project: Project, board: str, command: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ssh_argv(project.status(board)), command], capture_output=True, text=True, timeout=60)


def results(project: Project, board: str, run_id: str) -> dict[str, dict]:
    pulled = project.deploy_json("pull", board, "--run", run_id)["boards"][0]
    lines = (Path(pulled["path"]) / "results.jsonl").read_text().splitlines()
    return {r["image"]: r for r in map(json.loads, lines)}


def assert_right_classes(recs: dict[str, dict]) -> None:
    assert top1(recs["chelsea.jpg"]) in CAT
    assert top1(recs["coffee.jpg"]) in ESPRESSO
    assert top1(recs["rocket.jpg"]) in ROCKET


@pytest.fixture(scope="module")
def dk(tmp_path_factory, demo):
    proj = Project(tmp_path_factory.mktemp("dk"), demo, boards={"dk1": {"sandbox": True, "target": "atlas200dk",
                                                                         "arch": "x86_64"}})
    om = convert(proj)
    proj.app_extra = {"models": {"onnx": str(demo / "models" / "efficientnet_lite0.onnx"), "om": str(om)}}
    proj.configure()
    proj.up("dk1")
    yield proj
    assert proj.down()


def test_the_board_is_shaped_like_a_dk(dk):
    r = board_ssh(dk, "dk1", "whoami; python3 --version; python3.7 --version; npu-smi info | grep -c '| 0 '; "
                             "test -r ~/Ascend/nnrt/set_env.sh && echo set_env; python3.7 -c 'import acl' 2>&1 | tail -1")
    lines = r.stdout.splitlines()
    if ROOT:
        assert lines[0] == "HwHiAiUser"
    assert lines[1].startswith("Python 3.6.")  # Ubuntu 18.04's python3 (the real 3.6 here, or the stand-in)
    assert lines[2].startswith("Python 3.7." if HAVE_37 else "Python 3.")
    assert lines[3] == "2" and lines[4] == "set_env"
    assert "No module named 'acl'" in lines[5]  # as on a DK: only after sourcing set_env.sh
    shape = dk.status("dk1")["shape"]
    assert any(s.startswith("/usr/bin/python3.7: ") for s in shape), shape
    assert_has_c_library(dk, "003e")  # EM_X86_64


def assert_has_c_library(project: Project, machine: str) -> None:
    """The simulated AscendCL C library (sandbox/capi.py) where C++ apps find it, for the board's arch,
    naming the board's CANN Python (whose shared libpython it embeds)."""
    nnrt = "~/Ascend/nnrt/runtime"
    r = board_ssh(project, "dk1", f"cd {nnrt} && ls include/acl/acl.h lib64/stub/libascendcl.so && "
                                  "od -An -tx2 -j18 -N2 lib64/libascendcl.so && cat lib64/acl-sim.conf")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[2] == machine and "python=" in r.stdout and "libpython=" in r.stdout, r.stdout


def test_check_picks_cann_python_and_not_python3(dk):
    row = dk.deploy_json("check", "dk1")["boards"][0]
    assert row["ok"], row
    found = {f["check"]: f for f in row["findings"]}
    assert "/sys/usr/bin/python3.7 " in found["interpreter"]["detail"]
    assert "not used: python3 -> " in found["interpreter"]["detail"]
    assert found["import acl"]["ok"] and "set_env.sh sourced" in found["import acl"]["detail"]
    assert "Ascend310" in found["soc version"]["detail"]
    assert row["facts"]["python"].startswith("3.7." if HAVE_37 else "3.")
    if not HAVE_37:
        assert found["python version"]["severity"] == "warning" and "stands in" in found["python version"]["detail"]


def test_push_run_pull_sync_then_async(dk):
    pushed = dk.deploy_json("push", "dk1")["boards"][0]
    assert pushed["ok"] and pushed["target"] == "atlas200dk"
    if HAVE_37:
        assert pushed["python"] == "3.7"
        sos = [p.name for p in (Path(dk.status("dk1")["home"]) / "HIAI_PROJECTS/classify/current/site/numpy/core")
               .glob("_multiarray_umath*.so")]
        assert sos and all("cpython-37m" in n for n in sos), sos  # the DK's cp37 set, not the host's
    run = dk.deploy_json("run", "dk1", "-q")["boards"][0]
    assert run["ok"] and run["images_ok"] == 3
    assert_right_classes(results(dk, "dk1", run["run_id"]))

    dk.app_extra["backend_options"] = {"async": True, "callback_interval": 2, "buffers": 3}
    dk.configure()
    assert dk.deploy_json("push", "dk1")["boards"][0]["ok"]
    run = dk.deploy_json("run", "dk1", "-q")["boards"][0]
    assert run["ok"] and run["images_ok"] == 3
    recs = results(dk, "dk1", run["run_id"])
    assert_right_classes(recs)
    job = json.loads((dk.root / "outputs" / "dk1" / run["run_id"] / "job.json").read_text())
    assert job["backend"] == "acl" and job["backend_options"]["async"] is True


def test_bench_reports_sync_and_async_side_by_side(dk):
    dk.deploy_json("push", "dk1")
    run = dk.deploy_json("run", "dk1", "--mode", "bench", "-q")["boards"][0]
    assert run["ok"], run
    rows = run["summary"]["bench"]
    assert [r["mode"] for r in rows] == ["sync", "async"] and all(r["batch"] == 1 for r in rows)
    for r in rows:
        assert r["throughput"] > 0 and r["latency_ms"]["count"] == r["loop"]
        assert 0 < r["latency_ms"]["median"] <= r["latency_ms"]["p99"]


@pytest.mark.skipif(not (HAVE_36 and ROOT), reason="needs the machine's CPython 3.6 as the DK's python3")
def test_python3_on_a_dk_is_refused_in_one_line(dk):
    dk.boards["dk1"]["python"] = "python3"
    dk.configure()
    try:
        r = dk.deploy("check", "dk1", check=False)
    finally:
        del dk.boards["dk1"]["python"]
        dk.configure()
    assert r.returncode != 0
    assert "is Python 3.6; the board code needs >= 3.7" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_sandbox_dk_with_only_the_onnx_gets_a_simulated_om_built_once(dk):
    saved = dict(dk.app_extra)
    dk.app_extra = {}
    dk.configure()
    try:
        first = dk.deploy_json("push", "dk1")["boards"][0]
        again = dk.deploy_json("push", "dk1")["boards"][0]
        run = dk.deploy_json("run", "dk1", "-q")["boards"][0]
    finally:
        dk.app_extra = saved
        dk.configure()
    assert first["ok"] and again["ok"] and again["payload_bytes"] == 0
    assert list((dk.root / ".deploy" / "models").glob("*.Ascend310.om"))
    assert run["ok"] and run["images_ok"] == 3
    assert_right_classes(results(dk, "dk1", run["run_id"]))


def test_decode_dvpp_gives_the_cpu_paths_top1_on_the_board(dk):
    """app.backend_options.decode: dvpp: `--aipp app` converts with a YUV420SP_U8 AIPP, the board's agent
    decodes on the simulated DVPP (sync, then async), and every photo gets the cpu path's top-1."""
    saved = dict(dk.app_extra)
    try:
        dk.app_extra = {"models": saved["models"]}
        dk.configure()
        assert dk.deploy_json("push", "dk1")["boards"][0]["ok"]
        cpu = results(dk, "dk1", dk.deploy_json("run", "dk1", "-q")["boards"][0]["run_id"])
        dk.app_extra["backend_options"] = {"decode": "dvpp"}
        dk.configure()
        om = convert(dk, "eff_yuv")  # the inventory's decode: dvpp makes --aipp app a YUV420SP_U8 input
        dk.app_extra["models"] = {**saved["models"], "om": str(om)}
        for options in ({"decode": "dvpp"}, {"decode": "dvpp", "async": True, "callback_interval": 2}):
            dk.app_extra["backend_options"] = options
            dk.configure()
            assert dk.deploy_json("push", "dk1")["boards"][0]["ok"]
            run = dk.deploy_json("run", "dk1", "-q")["boards"][0]
            assert run["ok"] and run["images_ok"] == 3
            recs = results(dk, "dk1", run["run_id"])
            assert {k: top1(r) for k, r in recs.items()} == {k: top1(r) for k, r in cpu.items()}
            summary = json.loads((dk.root / "outputs" / "dk1" / run["run_id"] / "summary.json").read_text())
            assert summary["decode"] == {"decode": "dvpp", "dvpp_decoded": 3, "cpu_fallbacks": {}}
    finally:
        dk.app_extra = saved
        dk.configure()


def test_a_simulated_model_is_refused_for_a_real_board(dk):
    dk.boards["real"] = {"host": "192.0.2.1", "target": "atlas200dk"}
    dk.configure()
    try:
        r = dk.deploy("push", "real", check=False)
    finally:
        del dk.boards["real"]
        dk.configure()
    assert r.returncode != 0 and "simulated" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.skipif(not ROOT or not shutil.which("qemu-aarch64-static") or not shutil.which("debootstrap"),
                    reason="the emulated board needs root, qemu-user-static and debootstrap")
def test_emulated_aarch64_dk(tmp_path, demo):
    proj = Project(tmp_path, demo, boards={"dk1": {"sandbox": True, "target": "atlas200dk"}})  # aarch64 by default
    om = convert(proj)
    proj.app_extra = {"models": {"onnx": str(demo / "models" / "efficientnet_lite0.onnx"), "om": str(om)}}
    proj.configure()
    try:
        proj.up("dk1", timeout=1800)
        row = proj.deploy_json("check", "dk1")["boards"][0]
        found = {f["check"]: f for f in row["findings"]}
        assert row["ok"] and row["facts"]["arch"] == "aarch64", row
        assert "stands in" in found["python version"]["detail"]  # the rootfs's 3.9 at the DK's 3.7 place
        assert_has_c_library(proj, "00b7")  # EM_AARCH64, built against the rootfs
        pushed = proj.deploy_json("push", "dk1", timeout=900)["boards"][0]
        assert pushed["ok"] and pushed["python"] == "3.9"
        run = proj.deploy_json("run", "dk1", "-q", timeout=900)["boards"][0]
        assert run["ok"] and run["images_ok"] == 3
        assert_right_classes(results(proj, "dk1", run["run_id"]))
    finally:
        assert proj.down()
