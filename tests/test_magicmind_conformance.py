"""Cambricon's own MagicMind clients, unmodified from the checkout MAGICMIND_CLOUD names, run
against the simulated runtime (as subprocesses, from their own folders, on CPython 3.7 with numpy < 1.24
and opencv where the machine has a 3.7) on models built by the simulated builder from the demo
EfficientNet-Lite0, and must give sensible top-1 on real photos:

* seed 003's resnext50 ``infer_python/infer.py`` (uint8 NHWC, one output list reused for every image),
  scored by ``compute_top1_and_top5.py``;
* the resnet50_onnx ``infer.py`` through ``python_common/mm_runner.py`` (MMRunner: everything made
  inside ``with mm.System()`` and used after it; float64 NHWC batches of 2 on a mutable-batch model).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import vendor

from deploy.testing import CAT, ESPRESSO, ROCKET

REPO = Path(__file__).resolve().parents[1]
CAMBRICON = REPO / "deploy" / "sandbox" / "cambricon"
RUNTIME = CAMBRICON / "runtime"
CLIENTS = vendor.CAMBRICON_ROOT / "buildin"  # a checkout outside the repo, named by MAGICMIND_CLOUD
RESNEXT = CLIENTS / "cv" / "classification" / "resnext50_caffe" / "infer_python"
RESNET = CLIENTS / "cv" / "classification" / "resnet50_onnx" / "infer_python"
DEMO_ONNX = REPO / "demo" / "models" / "efficientnet_lite0.onnx"
PY37 = Path.home() / ".pyenv" / "versions" / "3.7.16" / "bin" / "python3.7"
# Cambricon's magicmind 1.7 image is Python 3.7; client 3 needs numpy < 1.24 (np.float), both need cv2
PINS = ["numpy==1.21.6", "Pillow==9.5.0", "onnxruntime==1.14.1", "opencv-python-headless==4.8.1.78", "tqdm==4.66.1"]
PHOTOS = {"coffee.jpg": 967, "chelsea.jpg": 285, "rocket.jpg": 657}  # ground truth for the scorer
EXPECTED = {"coffee.jpg": ESPRESSO, "chelsea.jpg": CAT, "rocket.jpg": ROCKET}


def python37() -> str:
    """CPython 3.7 with the clients' packages in a cached venv (built once), else skip."""
    if not PY37.is_file():
        pytest.skip(f"no CPython 3.7 at {PY37}")
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "atlas-deploy" / "py37-mm-sim"
    python, marker = root / "bin" / "python", root / ".pins"
    if marker.is_file() and marker.read_text() == " ".join(PINS) and python.is_file():
        return str(python)
    subprocess.run([str(PY37), "-m", "venv", "--clear", str(root)], check=True)
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS],
                         capture_output=True, text=True)  # fmt: skip
    if pip.returncode != 0:
        pytest.skip(f"cannot install the clients' packages into a 3.7 venv: {pip.stderr.strip()[-200:]}")
    marker.write_text(" ".join(PINS))
    return str(python)


def build(output: Path, *flags: str) -> Path:
    r = subprocess.run([sys.executable, str(CAMBRICON / "mm_build_sim.py"), "--onnx_model", str(DEMO_ONNX),
                        "--output_model", str(output), *flags], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return output


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    vendor.magicmind_cloud()
    if not DEMO_ONNX.is_file():
        pytest.skip("demo model missing: run `python3 -m deploy model demo` first")
    python = python37()
    d = tmp_path_factory.mktemp("mmconf")
    images = d / "images"
    images.mkdir()
    for name in PHOTOS:
        shutil.copy(REPO / "demo" / "images" / name, images / name)
    labels = d / "labels.txt"
    labels.write_text("".join(f"{name} {label}\n" for name, label in PHOTOS.items()))
    stub = d / "stub"  # preprocess.py imports torchvision.transforms and never uses it
    (stub / "torchvision").mkdir(parents=True)
    (stub / "torchvision" / "__init__.py").write_text("")
    (stub / "torchvision" / "transforms.py").write_text("")
    return python, d, images, labels, stub


def run_client(python, script, cwd, args, path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MM_SIM_") and k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in [RUNTIME, *path])
    return subprocess.run([python, str(script), *args], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def client_args(model, images, labels, out):
    out.mkdir(parents=True, exist_ok=True)
    return ["--device_id", "0", "--magicmind_model", str(model), "--image_dir", str(images), "--image_num",
            str(len(PHOTOS)), "--name_file", str(CLIENTS / "cv" / "utils" / "imagenet_name.txt"),
            "--label_file", str(labels), "--result_file", str(out / "infer_result.txt"),
            "--result_label_file", str(out / "eval_labels.txt"), "--result_top1_file", str(out / "eval_result_1.txt"),
            "--result_top5_file", str(out / "eval_result_5.txt")]  # fmt: skip


def score(python, out):
    """compute_top1_and_top5.py on the client's three files: (top1, top5) from its stdout."""
    r = subprocess.run([python, str(CLIENTS / "cv" / "utils" / "compute_top1_and_top5.py"),
                        "--result_label_file", str(out / "eval_labels.txt"), "--result_1_file",
                        str(out / "eval_result_1.txt"), "--result_5_file", str(out / "eval_result_5.txt"),
                        "--top1andtop5_file", str(out / "eval_result.txt")],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    top1 = float(re.search(r"top1:\s+([\d.]+)", r.stdout).group(1))
    top5 = float(re.search(r"top5:\s+([\d.]+)", r.stdout).group(1))
    assert "top1 accuracy:" in (out / "eval_result.txt").read_text()
    return top1, top5


def check_outputs(out):
    """Each image's top-1 (eval_result_1.txt, in label-file order) is one of its expected classes; five
    top-5 lines per image; infer_result.txt names the classes."""
    top1 = [int(line.split(": ")[1]) for line in (out / "eval_result_1.txt").read_text().splitlines()]
    assert len(top1) == len(PHOTOS)
    for (name, _), got in zip(PHOTOS.items(), top1, strict=True):
        assert got in EXPECTED[name], (name, got)
    assert len((out / "eval_result_5.txt").read_text().splitlines()) == 5 * len(PHOTOS)
    assert "espresso" in (out / "infer_result.txt").read_text()


def test_seed_003_resnext50_infer_python_and_scorer(setup):
    """uint8 NHWC with the normalisation inside (insert_bn, force_float16), one outputs list reused for
    every image: enqueue must replace its contents, or every image would report the first one's scores."""
    python, d, images, labels, stub = setup
    model = build(d / "eff_model_force_float16_true_1", "--precision", "force_float16", "--shape_mutable", "true",
                  "--mean", "127", "--std", "128")  # fmt: skip
    out = d / "out_resnext50"
    r = run_client(python, RESNEXT / "infer.py", RESNEXT, [*client_args(model, images, labels, out), "--batch", "1"],
                   [stub])  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    check_outputs(out)
    top1, top5 = score(python, out)
    assert top1 >= 2 / 3 and top5 == 1.0


def test_resnet50_onnx_client_through_mm_runner(setup):
    """MMRunner builds engine, context, queue and inputs inside `with mm.System()` and runs after it;
    the client feeds float64 NHWC batches of 2 (cast to the FLOAT input: a guess, see the runtime's docs)."""
    python, d, images, labels, stub = setup
    model = build(d / "eff_float_true", "--precision", "force_float32", "--shape_mutable", "true",
                  "--mean", "127", "--std", "128", "--input_dtype", "FLOAT")  # fmt: skip
    out = d / "out_resnet50"
    path = [stub, CLIENTS / "python_common", CLIENTS / "cv" / "utils"]
    r = run_client(python, RESNET / "infer.py", RESNET, [*client_args(model, images, labels, out), "--batch_size",
                                                         "2"], path)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "All Model resource Created Success!" in r.stderr
    check_outputs(out)
    top1, top5 = score(python, out)
    assert top1 >= 2 / 3 and top5 == 1.0
