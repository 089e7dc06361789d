"""The emulated aarch64 board: Debian bullseye arm64 rootfs + qemu-user, sshd and Python 3.9 inside.

Proves the cross-build: the release carries aarch64 cp39 wheels built on this x86_64 host, and the
agent classifies the demo photos with ONNX Runtime on the (emulated) board. Slow: the rootfs is built
once with debootstrap (~4 min) and cached outside the repo; inference under qemu is ~1.7 s per image.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from deploy.testing import CAT, ESPRESSO, ROCKET, Project, top1

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(2400),  # the first run on a machine builds the rootfs with debootstrap
    pytest.mark.skipif(os.geteuid() != 0, reason="the emulated board needs root (chroot, binfmt_misc)"),
    pytest.mark.skipif(not shutil.which("qemu-aarch64-static") or not shutil.which("debootstrap"),
                       reason="needs qemu-user-static and debootstrap (scripts/setup.sh installs them)"),
]


ARM_BOARD = {"sandbox": True, "arch": "aarch64", "target": "aarch64-cpu"}


@pytest.fixture(scope="module")
def arm(tmp_path_factory, demo):
    proj = Project(tmp_path_factory.mktemp("arm"), demo, boards={"board1": ARM_BOARD})
    proj.up(timeout=1800)
    yield proj
    assert proj.down()


def test_check_push_run_pull_on_emulated_aarch64(arm):
    checked = arm.deploy_json("check", "board1")["boards"][0]
    assert checked["ok"], checked
    assert checked["facts"]["arch"] == "aarch64" and checked["facts"]["python"].startswith("3.9.")

    pushed = arm.deploy_json("push", "board1")["boards"][0]
    assert pushed["ok"] and pushed["target"] == "aarch64-cpu" and pushed["python"] == "3.9"
    site = arm.app_dir / "current" / "site"
    sos = [p.name for p in (site / "onnxruntime" / "capi").glob("*.so")]
    assert any("aarch64" in n or "cpython-39" in n for n in sos), sos  # aarch64 cp39 wheels, not the host's
    assert not any("x86_64" in n for n in sos)

    # plain non-interactive ssh into the emulated board gets the env (block before the guard)
    r = arm.ssh('uname -m; python3 -c "import onnxruntime, numpy, PIL; print(onnxruntime.__file__)"')
    assert r.stdout.splitlines()[0] == "aarch64" and "/current/site/onnxruntime/" in r.stdout

    run = arm.deploy_json("run", "board1", "-q")["boards"][0]
    assert run["ok"] and run["images_ok"] == 3
    pulled = arm.deploy_json("pull", "board1")["boards"][0]
    recs = {r["image"]: r for r in map(json.loads, (Path(pulled["path"]) / "results.jsonl").read_text().splitlines())}
    assert top1(recs["chelsea.jpg"]) in CAT
    assert top1(recs["coffee.jpg"]) in ESPRESSO
    assert top1(recs["rocket.jpg"]) in ROCKET


def test_an_own_app_with_a_compiled_wheel_runs_on_emulated_aarch64(arm):
    """Issue 20: the user's own app, its requirements cross-built as aarch64 cp39 wheels (msgpack's C extension)."""
    from test_own_app import OWN, make_app

    make_app(arm.root)
    arm.app_extra = dict(OWN)
    arm.configure()
    try:
        pushed = arm.deploy_json("push", "board1")["boards"][0]
        assert pushed["ok"] and pushed["health"]["status"] == "passed", pushed
        sos = [p.name for p in (arm.app_dir / "current" / "site" / "msgpack").glob("*.so")]
        assert sos and all("aarch64" in n for n in sos), sos
        r = arm.deploy("run", "board1", "--images", str(arm.images))
        assert "[3/3]" in r.stdout and "python 3.9." in r.stderr
        out = Path(arm.deploy_json("pull", "board1")["boards"][0]["path"]) / "outputs"
        assert len(list(out.iterdir())) == 3
    finally:
        arm.app_extra = {}
        arm.configure()
