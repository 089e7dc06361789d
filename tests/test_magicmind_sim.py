"""The simulated MagicMind runtime and the agent's magicmind backend, in process: the conventions real
clients rely on (statuses, not exceptions; enqueue filling the caller's list in place; objects alive after
``with mm.System()``), mutable and static batch, injected faults that do no work, the backend's one-line
errors, its numbers against ONNX Runtime on the same network, and `deploy model convert` for mlu370."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.backends import BackendError
from agent.backends.magicmind import MagicMindBackend
from deploy.release import mmfile

REPO = Path(__file__).resolve().parents[1]
CAMBRICON = REPO / "deploy" / "sandbox" / "cambricon"
RUNTIME = CAMBRICON / "runtime"
DEMO_ONNX = REPO / "demo" / "models" / "efficientnet_lite0.onnx"


def build(output: Path, *flags: str) -> Path:
    r = subprocess.run([sys.executable, str(CAMBRICON / "mm_build_sim.py"), "--onnx_model", str(DEMO_ONNX),
                        "--output_model", str(output), *flags], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return output


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    if not DEMO_ONNX.is_file():
        pytest.skip("demo model missing: run `python3 -m deploy model demo` first")
    d = tmp_path_factory.mktemp("mm")
    mutable = build(d / "eff_u8.mm", "--precision", "force_float32", "--shape_mutable", "true", "--mean", "127",
                    "--std", "128")  # fmt: skip
    static = build(d / "eff_b2.mm", "--precision", "force_float16", "--shape_mutable", "false", "--batch_size", "2")
    return {"mutable": mutable, "static": static, "dir": d}


@pytest.fixture
def mm(monkeypatch):
    """A freshly imported simulated runtime (fresh fault counters), MM_SIM_* cleared."""
    for key in [k for k in os.environ if k.startswith("MM_SIM_")]:
        monkeypatch.delenv(key)
    for name in [m for m in sys.modules if m == "magicmind" or m.startswith("magicmind.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(RUNTIME))
    module = importlib.import_module("magicmind.python.runtime")
    assert module.SIMULATED
    return module


def photo_u8(name: str) -> np.ndarray:
    """A demo photo as seed 003's client prepares it: short side 256, centre 224, RGB uint8 NHWC."""
    from PIL import Image

    img = Image.open(REPO / "demo" / "images" / name).convert("RGB")
    w, h = img.size
    s = 256 / min(w, h)
    img = img.resize((round(w * s), round(h * s)), Image.BILINEAR)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    return np.asarray(img.crop((left, top, left + 224, top + 224)), np.uint8)[None]


def open_model(mm, path):
    model = mm.Model()
    assert model.deserialize_from_file(str(path)).ok()
    with mm.System() as system:
        assert system.device_count() == 1
        dev = mm.Device()
        dev.id = 0
        assert dev.active().ok()
        engine = model.create_i_engine()
        context = engine.create_i_context()
        queue = dev.create_queue()
        inputs = context.create_inputs()
    return model, dev, context, queue, inputs  # used after the with block, as MMRunner does


def test_the_host_and_the_runtime_agree_on_the_magic():
    sys.path.insert(0, str(RUNTIME / "magicmind" / "python" / "runtime"))
    try:
        import simmm
    finally:
        sys.path.pop(0)
    assert mmfile.SIMULATED_MM_MAGIC == simmm.MAGIC


def test_enqueue_fills_the_callers_list_in_place_after_the_system_block(mm, models):
    model, dev, context, queue, inputs = open_model(mm, models["mutable"])
    assert [d.GetDims() for d in model.get_input_dimensions()] == [[-1, 224, 224, 3]]
    assert str(model.get_input_data_types()[0]) == "DataType.UINT8"
    outputs = []
    tops = []
    for name in ("coffee.jpg", "chelsea.jpg"):
        assert inputs[0].from_numpy(photo_u8(name)).ok() and inputs[0].to(dev).ok()
        assert context.enqueue(inputs, outputs, queue).ok()
        assert queue.sync().ok()
        assert len(outputs) == 1  # replaced, never appended
        tops.append(int(outputs[0].asnumpy()[0].argmax()))
    assert tops[0] == 967 and 281 <= tops[1] <= 285
    batch = np.concatenate([photo_u8("coffee.jpg")] * 3)
    assert inputs[0].from_numpy(batch).ok() and context.enqueue(inputs, outputs, queue).ok() and queue.sync().ok()
    assert outputs[0].asnumpy().shape == (3, 1000)


def test_errors_are_statuses_not_exceptions(mm, models, tmp_path, monkeypatch):
    model = mm.Model()
    missing = model.deserialize_from_file(str(tmp_path / "nope"))
    assert not missing.ok() and missing.error_code() == mm.Code.NOT_FOUND
    junk = tmp_path / "junk.mm"
    junk.write_bytes(b"\x00" * 64)
    bad = model.deserialize_from_file(str(junk))
    assert not bad.ok() and "not a MagicMind model" in str(bad)
    assert model.create_i_engine() is None
    _, dev, context, queue, inputs = open_model(mm, models["mutable"])
    assert inputs[0].from_numpy(np.zeros((1, 224, 224, 3), np.float32)).ok()
    wrong = context.enqueue(inputs, [], queue)
    assert not wrong.ok() and "UINT8" in str(wrong)
    assert inputs[0].from_numpy(np.zeros((65, 224, 224, 3), np.uint8)).ok()
    assert context.enqueue(inputs, [], queue).error_code() == mm.Code.OUT_OF_RANGE
    other = mm.Device()
    other.id = 3
    assert not other.active().ok() and other.create_queue() is None
    monkeypatch.setenv("MM_SIM_ARCH", "mtp_322")
    arch = mm.Model().deserialize_from_file(str(models["mutable"]))
    assert not arch.ok() and "built for mtp_372" in str(arch)


def test_a_static_model_takes_its_batch_only(mm, models):
    _, dev, context, queue, inputs = open_model(mm, models["static"])
    assert inputs[0].shape == (2, 224, 224, 3)
    assert inputs[0].from_numpy(np.zeros((1, 224, 224, 3), np.float32)).ok()
    assert context.enqueue(inputs, [], queue).error_code() == mm.Code.INVALID_ARGUMENT
    out = []
    assert inputs[0].from_numpy(np.zeros((2, 224, 224, 3), np.float64)).ok()  # float64 cast (a guess)
    assert context.enqueue(inputs, out, queue).ok() and queue.sync().ok() and out[0].asnumpy().shape == (2, 1000)


def test_injected_faults_do_not_do_the_work(mm, models, monkeypatch):
    monkeypatch.setenv("MM_SIM_FAIL", "enqueue:1,sync:2")
    _, dev, context, queue, inputs = open_model(mm, models["mutable"])
    inputs[0].from_numpy(photo_u8("coffee.jpg"))
    outputs = []
    failed = context.enqueue(inputs, outputs, queue)
    assert not failed.ok() and "injected fault" in str(failed) and outputs == []
    assert queue.sync().ok()  # nothing was queued
    assert context.enqueue(inputs, outputs, queue).ok()
    assert not queue.sync().ok()  # the second sync fails: the execution is dropped
    assert not outputs[0].asnumpy().any()  # never computed


def test_backend_one_line_errors(mm, models, tmp_path, monkeypatch):
    with pytest.raises(BackendError, match=r"MLU device 2 does not exist \(this host has 1\)"):
        MagicMindBackend(device_id=2, mm_module=mm).load(str(models["mutable"]))
    junk = tmp_path / "x.mm"
    junk.write_text("hello")
    with pytest.raises(BackendError, match=r"deserialize_from_file\(.*\) failed: DATA_LOSS: .*not a MagicMind model"):
        MagicMindBackend(mm_module=mm).load(str(junk))
    monkeypatch.setenv("MM_SIM_FAIL", "enqueue:2")
    b = MagicMindBackend(mm_module=mm).load(str(models["mutable"]))
    assert b.inputs[0].dtype == "uint8" and b.inputs[0].layout == "NHWC" and b.inputs[0].batch is None
    b.run(photo_u8("coffee.jpg"))
    with pytest.raises(BackendError, match="enqueue failed: INTERNAL: injected fault"):
        b.run(photo_u8("coffee.jpg"))
    assert int(b.run(photo_u8("coffee.jpg"))[0][0].argmax()) == 967  # the next batch runs again
    b.close()
    b.close()


def test_backend_numbers_match_onnx_runtime_on_the_same_network(mm, models):
    from agent.backends.onnx import OnnxBackend

    b = MagicMindBackend(mm_module=mm).load(str(models["mutable"]))
    ref = OnnxBackend(threads=1).load(str(DEMO_ONNX))
    batch = np.concatenate([photo_u8(n) for n in ("coffee.jpg", "chelsea.jpg", "rocket.jpg")])
    got = b.run(batch)[0]
    want = ref.run(((batch.astype(np.float32) - 127) / 128).transpose(0, 3, 1, 2))[0]
    assert got.shape == want.shape == (3, 1000)
    assert np.abs(got - want).max() < 1e-3 and (got.argmax(1) == want.argmax(1)).all()


def test_convert_prints_seed_003s_build_without_an_sdk(tmp_path):
    r = subprocess.run([sys.executable, "-m", "deploy", "model", "convert", "resnext50.prototxt", "--weight",
                        "resnext50.caffemodel", "--target", "mlu370", "--precision", "force_float16"],
                       capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert r.stdout.startswith("python3 gen_model.py --caffe_model resnext50.caffemodel --prototxt resnext50.prototxt")
    assert "--precision force_float16 --shape_mutable true" in r.stdout and "Traceback" not in r.stderr
