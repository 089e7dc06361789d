"""The release's ``site/`` carries only what the agent and its backend import (deploy/wheelhouse.py PRUNE).

Proof by running: the agent runs from a slim tree alone (``python -S``: no site-packages, so numpy,
Pillow and ONNX Runtime can only come from the tree) on the demo photos with every preset, in run,
bench and eval mode, on this machine's Python and on a real CPython 3.7 (the DK's) where there is one.
The acl backend on the slim tree is proven by the simulated Atlas board's tests (tests/test_atlas_sandbox.py)
and the aarch64 tree by tests/test_aarch64.py: releases carry this tree.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.preprocess import PRESETS
from deploy import targets
from deploy.models import DEMO_PHOTOS
from deploy.release import wheelhouse
from deploy.testing import CAT, REPO, top1

INTERPRETERS = [(sys.executable, f"{sys.version_info[0]}.{sys.version_info[1]}")]
INTERPRETERS += [(p, "3.7") for p in sorted(glob.glob("/root/.pyenv/versions/3.7.*/bin/python3.7"))[:1]]


def test_what_is_pruned_and_what_is_kept():
    gone = [
        "numpy/_core/tests/test_umath.py", "PIL/__pycache__/Image.cpython-311.pyc", "numpy/__init__.pyi",
        "numpy/_core/include/numpy/ndarraytypes.h", "numpy/random/lib/libnpyrandom.a", "numpy/f2py/crackfortran.py",
        "numpy/_core/_umath_tests.cpython-311-x86_64-linux-gnu.so", "numpy/core/_simd.cpython-37m-aarch64-linux-gnu.so",
        "onnxruntime/capi/libonnxruntime.so.1.31.1", "onnxruntime/transformers/optimizer.py",
        "PIL/_avif.cpython-311-x86_64-linux-gnu.so", "pillow.libs/libavif-c6062d5f.so.16.4.2",
        "numpy-2.4.6.data/scripts/f2py",
    ]
    kept = [
        "numpy/__init__.py", "numpy/_core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so",
        "numpy/core/_multiarray_tests.cpython-37m-x86_64-linux-gnu.so",  # numpy 1.x imports it at start "numpy/_typing/_array_like.py",
        "numpy.libs/libscipy_openblas64_-32a4b2a6.so", "numpy/random/_generator.cpython-311-x86_64-linux-gnu.so",
        "onnxruntime/capi/onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so", "onnxruntime/capi/_pybind_state.py",
        "onnxruntime/capi/libonnxruntime_providers_shared.so", "PIL/_webp.cpython-311-x86_64-linux-gnu.so",
        "PIL/ImageFont.py", "pillow.libs/libfreetype-57f805ba.so.6.20.6", "numpy-2.4.6.dist-info/LICENSE.txt",
        "onnxruntime/ThirdPartyNotices.txt", "xnumpy/f2py/kept.py",
    ]
    assert [n for n in gone if not wheelhouse.pruned(n)] == []
    assert [n for n in kept if wheelhouse.pruned(n)] == []


@pytest.fixture(scope="module", params=INTERPRETERS, ids=lambda p: p[1])
def slim(request):
    python, version = request.param
    site = wheelhouse.site_for(targets.get("x86_64-cpu"), version)
    files = [p for p in site.rglob("*") if p.is_file()]
    assert not [p for p in files if wheelhouse.pruned(str(p.relative_to(site)))]
    return python, site


def agent(python: str, site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{site}{os.pathsep}{REPO}", "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([python, "-S", "-m", "agent", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


def test_the_agent_imports_its_dependencies_from_the_slim_tree_only(slim, tmp_path):
    python, site = slim
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    probe = "import numpy, PIL.Image, PIL.ImageFont, onnxruntime; print(numpy.__file__, PIL.__file__, onnxruntime.__file__)"
    r = subprocess.run([python, "-S", "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert all(path.startswith(str(site)) for path in r.stdout.split()), r.stdout


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_runs_from_the_slim_tree(slim, demo, tmp_path, preset):
    python, site = slim
    out = tmp_path / "out"
    r = agent(python, site, "run", "--model", str(demo / "models" / "efficientnet_lite0.onnx"), "--labels",
              str(demo / "labels" / "imagenet_classes.txt"), "--images", str(demo / "images"), "--preset", preset,
              "--out", str(out), "--threads", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(results) == len(DEMO_PHOTOS) and all(x["ok"] for x in results)
    assert len(list((out / "labelled").iterdir())) == len(DEMO_PHOTOS)  # drawn with Pillow's FreeType
    if preset == "imagenet":  # the demo model's own preprocessing: the right answers
        cat = next(x for x in results if x["image"].endswith("chelsea.jpg"))
        assert top1(cat) in CAT


def test_bench_and_eval_run_from_the_slim_tree(slim, demo, tmp_path):
    python, site = slim
    model = str(demo / "models" / "efficientnet_lite0.onnx")
    r = agent(python, site, "bench", "--model", model, "--loop", "5", "--warmup", "1", "--batch-sizes", "1,2",
              "--out", str(tmp_path / "bench"), "--threads", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    truth = tmp_path / "val_label.txt"
    truth.write_text("".join(f"{name} {min(classes)}\n" for name, (_, classes) in DEMO_PHOTOS.items() if classes))
    r = agent(python, site, "eval", "--model", model, "--labels", str(demo / "labels" / "imagenet_classes.txt"),
              "--images", str(demo / "images"), "--label-file", str(truth), "--out", str(tmp_path / "eval"),
              "--threads", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())
