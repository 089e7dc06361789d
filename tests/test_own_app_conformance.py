"""Huawei's own Python apps, unmodified, shipped as the user's app to a simulated Atlas 200 DK with
``deploy push``, run with ``deploy run --images`` on real photos, and their outputs pulled back (issue 20).

The apps come from a checkout of Ascend/samples outside the repo (``ASCEND_SAMPLES``, see tests/vendor.py);
the test copies the two folders a user would ship (``python/common`` and the sample's own) into a scratch
``samples/`` tree with their layout kept, adds the model the sample expects (``../model/<name>.om``, made
by ``deploy model convert --simulate``) and a requirements.txt, and points the inventory at it. Nothing
of Huawei's is stored in the project.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import vendor

from deploy.testing import REPO, Project, deploy_environ

CLS = "python/level2_simple_inference/1_classification"
DK = {"sandbox": True, "target": "atlas200dk", "arch": "x86_64"}
PY37 = Path.home() / ".pyenv" / "versions" / "3.7.16" / "bin" / "python3.7"
PHOTOS = ("chelsea.jpg", "coffee.jpg", "rocket.jpg")

pytestmark = pytest.mark.skipif(not PY37.exists(), reason="no CPython 3.7 on this machine for the simulated DK")


def ten_class_onnx(path: Path) -> Path:
    """A small fp32 NCHW 1x3x224x224 -> 10 logits model (the CIFAR-10 ResNet-50 the sample ships is ModelArts-
    trained and not public): a strided conv, global average pool and a dense layer with fixed weights."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "d"),
             numpy_helper.from_array(np.zeros(10, np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], strides=[4, 4]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "d", "b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "tiny10", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 224, 224])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def ship(samples_root: Path, dest: Path, sample: str) -> Path:
    """The folders a user ships, copied from the checkout with their layout kept; the sample's folder."""
    for rel in ("python/common", f"{CLS}/{sample}"):
        shutil.copytree(samples_root / rel, dest / rel, ignore=shutil.ignore_patterns("*.pyc", "__pycache__"))
    (dest / "requirements.txt").write_text("numpy\nPillow\n")
    return dest / CLS / sample


def convert(onnx: Path, output: Path, *extra: str) -> None:
    argv = [sys.executable, "-m", "deploy", "-i", str(REPO / "inventory.yaml"), "model", "convert", str(onnx),
            "--target", "atlas200dk", "--simulate", "-o", str(output), *extra]
    r = subprocess.run(argv, capture_output=True, text=True, env=deploy_environ(), cwd=REPO)
    assert r.returncode == 0, r.stderr


def project_for(tmp_path: Path, sample: str, out: str) -> tuple[Project, Path]:
    project = Project(tmp_path / "project", boards={"dk1": dict(DK)}, photos=PHOTOS)
    app = ship(vendor.ascend_samples(), project.root / "samples", sample)
    project.app_extra = {"source": "samples", "include": ["python/common/**", f"{CLS}/{sample}/**"],
                         "workdir": f"{CLS}/{sample}/src", "command": "python3 classify.py {images}",
                         "outputs": f"../{out}", "requirements": "requirements.txt"}
    project.configure()
    return project, app


def push_run_pull(project: Project) -> tuple[dict, Path, str]:
    project.up("dk1")
    push = project.deploy_json("push", "dk1")["boards"][0]
    assert push["ok"] and push["health"]["status"] == "passed", push
    run = project.deploy("run", "dk1", "--images", str(project.images))
    row = project.deploy_json("pull", "dk1")["boards"][0]
    return row, Path(row["path"]) / "outputs", run.stdout


def test_resnet50_mindspore_picture_runs_unmodified_as_the_users_app(tmp_path):
    project, app = project_for(tmp_path, "resnet50_mindspore_picture", "out")
    (app / "model").mkdir(exist_ok=True)
    convert(ten_class_onnx(tmp_path / "tiny10.onnx"), app / "model" / "resnet50")
    try:
        row, outputs, stdout = push_run_pull(project)
        assert sorted(p.name for p in outputs.iterdir()) == sorted(PHOTOS), row  # one labelled picture per photo
        assert stdout.count("======== top5 inference results: =============") == len(PHOTOS)
        from PIL import Image

        for name in PHOTOS:
            assert Image.open(outputs / name).size == Image.open(project.images / name).size
    finally:
        assert project.down()


def top1_per_image(stdout: str) -> dict[str, int]:
    """The sample's printout: ``images:PATH`` then its top-5 ``label:N  confidence: ...`` lines, best first."""
    got, image = {}, None
    for line in stdout.splitlines():
        if line.startswith("images:"):
            image = Path(line[len("images:"):].strip()).name
        elif line.startswith("label:") and image is not None and image not in got:
            got[image] = int(line.split()[0][len("label:"):])
    return got


def test_googlenet_imagenet_picture_decodes_on_dvpp_as_the_users_app(tmp_path):
    from test_acl_conformance import YUV_AIPP  # the sample's YUV420SP model input, as its insert_op.cfg says

    from deploy.testing import CAT, DEMO, ESPRESSO

    project, app = project_for(tmp_path, "googlenet_imagenet_picture", "out")
    cfg = tmp_path / "googlenet_yuv.cfg"
    cfg.write_text(YUV_AIPP)
    (app / "model").mkdir(exist_ok=True)
    convert(DEMO / "models" / "efficientnet_lite0.onnx", app / "model" / "googlenet_yuv", "--aipp", str(cfg))
    try:
        row, outputs, stdout = push_run_pull(project)
        assert sorted(p.name for p in outputs.iterdir()) == sorted(PHOTOS), row
        got = top1_per_image(stdout)
        assert got["coffee.jpg"] in ESPRESSO and got["chelsea.jpg"] in CAT, got
    finally:
        assert project.down()
