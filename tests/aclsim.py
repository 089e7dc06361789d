"""Helpers for the tests of the simulated pyACL (deploy/sandbox/ascend): fresh runtimes, tiny
models built by the simulated atc, Huawei's samples (ASCEND_SAMPLES), a CPython 3.7 to run them.

The simulated runtime keeps process state (acl.init is once per process), so each test gets a
freshly imported ``acl`` module (:func:`fresh_acl`); the samples run as subprocesses.
"""

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import vendor

REPO = Path(__file__).resolve().parents[1]
ASCEND = REPO / "deploy" / "sandbox" / "ascend"
RUNTIME = ASCEND / "runtime"
SAMPLES = vendor.ASCEND_ROOT  # Huawei's samples: a checkout outside the repo, named by ASCEND_SAMPLES
DEMO_ONNX = REPO / "demo" / "models" / "efficientnet_lite0.onnx"
PY37 = Path.home() / ".pyenv" / "versions" / "3.7.16" / "bin" / "python3.7"
PY37_PINS = ["numpy==1.21.6", "Pillow==9.5.0", "onnxruntime==1.14.1"]  # the Atlas 200 DK's cp37 set
_atc = None


def atc():
    """The simulated atc module, imported by path (it is also a script)."""
    global _atc
    if _atc is None:
        spec = importlib.util.spec_from_file_location("atc_sim", str(ASCEND / "atc_sim.py"))
        _atc = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_atc)
    return _atc


def fresh_acl(monkeypatch, **env):
    """A newly imported simulated ``acl`` (fresh process state) with ``ACL_SIM_*`` env set."""
    for key in [k for k in os.environ if k.startswith("ACL_SIM_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    for name in [m for m in sys.modules if m == "acl" or m.startswith("acl.")]:
        del sys.modules[name]
    monkeypatch.syspath_prepend(str(RUNTIME))
    module = importlib.import_module("acl")
    assert getattr(module, "SIMULATED", False), "imported a real pyACL, not the simulator"
    return module


def tiny_onnx(path, classes=4):
    """logits[n, k] = mean over the image of channel (k mod 3), times (k + 1): an NCHW float
    model on 3x8x8 inputs with a symbolic batch, whose answers a test can compute by hand."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.zeros((3, classes), np.float32)
    for k in range(classes):
        weights[k % 3, k] = k + 1
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return Path(path), weights


def build(onnx_path, output, *flags, soc="Ascend310"):
    """Run the simulated atc with the usual flags plus ``flags``; returns the .om path."""
    argv = [f"--model={onnx_path}", "--framework=5", f"--output={output}", f"--soc_version={soc}", *flags]
    return atc().convert(argv)


def require_samples():
    return vendor.ascend_samples()


def require_demo_model():
    if not DEMO_ONNX.is_file():
        pytest.skip("demo model missing: run `python3 -m deploy model demo` first")
    return DEMO_ONNX


def python37():
    """(interpreter, note): CPython 3.7.16 with the DK's cp37 numpy/Pillow/onnxruntime in a cached
    venv (built once, ~20 s), or this interpreter with the reason when no 3.7 is installed."""
    if not PY37.is_file():
        return sys.executable, f"no CPython 3.7 at {PY37}: running the samples on {sys.version.split()[0]}"
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "atlas-deploy" / "py37-acl-sim"
    python = root / "bin" / "python"
    marker = root / ".pins"
    if marker.is_file() and marker.read_text() == " ".join(PY37_PINS) and python.is_file():
        return str(python), "CPython 3.7.16 (cached venv)"
    subprocess.run([str(PY37), "-m", "venv", "--clear", str(root)], check=True)
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PY37_PINS],
        capture_output=True,
        text=True,
    )
    if pip.returncode != 0:
        return sys.executable, f"cannot install the cp37 set into a 3.7 venv ({pip.stderr.strip()[-200:]})"
    marker.write_text(" ".join(PY37_PINS))
    return str(python), "CPython 3.7.16 (venv just built)"


def run_sample(python, script, args, cwd, env=None, extra_path=(), timeout=60):
    """Run a sample script unmodified with the simulator (and ``extra_path``) on PYTHONPATH."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ACL_SIM_") and k != "PYTHONPATH"}
    full_env["PYTHONPATH"] = os.pathsep.join([str(RUNTIME), *[str(p) for p in extra_path]])
    full_env.update(env or {})
    return subprocess.run(
        [python, str(script), *args],
        cwd=str(cwd),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
