"""Helpers for the agent tests: tiny real ONNX models with known answers, and test images.

``colour_model`` builds a genuine ONNX graph (ReduceMean over the pixels, then a 3xC MatMul):
its logits are 4 x the mean of each input channel, so a red picture is class 0, green class 1,
blue class 2 whatever the preprocessing's scale, as long as channel order is kept.
"""

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from deploy import testing

ROOT = testing.REPO
DEMO = Path(os.environ.get("AGENT_TEST_DEMO", str(testing.DEMO)))  # override to test against another build
DEMO_MODEL = testing.demo_assets(DEMO).model
LABELS = ["red", "green", "blue"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (20, 20, 230)}

_ONNX_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "uint8": TensorProto.UINT8}


def colour_model(path, batch=None, layout="NCHW", dtype="float32", softmax=False, classes=3, size=224):
    """Write a model whose class is the dominant input channel; returns the path as str."""
    n = batch if batch else "N"
    shape = [n, 3, size, size] if layout == "NCHW" else [n, size, size, 3]
    axes = [2, 3] if layout == "NCHW" else [1, 2]
    x = helper.make_tensor_value_info("input", _ONNX_TYPES[dtype], shape)
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n, classes])
    weights = np.eye(3, classes, dtype=np.float32) * 4.0
    nodes, src = [], "input"
    if dtype != "float32":
        nodes.append(helper.make_node("Cast", ["input"], ["xf"], to=TensorProto.FLOAT))
        src = "xf"
    nodes.append(helper.make_node("ReduceMean", [src], ["m"], axes=axes, keepdims=0))
    nodes.append(helper.make_node("MatMul", ["m", "W"], ["z" if softmax else "logits"]))
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["logits"], axis=1))
    graph = helper.make_graph(nodes, "colour", [x], [y], [numpy_helper.from_array(weights, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def write_labels(path, names=LABELS):
    Path(path).write_text("\n".join(names) + "\n", encoding="utf-8")
    return str(path)


def solid(path, colour, size=(320, 240), fmt=None, mode="RGB", **save):
    """A flat-coloured picture (with a little texture so JPEG has something to code)."""
    w, h = size
    rng = np.random.RandomState(sum(colour) + w + h)
    a = np.clip(np.array(colour, np.int16)[None, None, :] + rng.randint(-8, 9, size=(h, w, 3)), 0, 255)
    im = Image.fromarray(a.astype(np.uint8), "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    im.save(str(path), fmt, **save)
    return str(path)


def photo_like(path, size=(1024, 683), seed=0, quality=90):
    """A smooth, photo-like JPEG (gradients plus noise), for geometry and speed checks."""
    w, h = size
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 128 + 100 * np.sin(xx / (17.0 + seed) + yy / 41.0)
    g = 128 + 100 * np.cos(yy / (23.0 + seed) - xx / 57.0)
    b = 128 + 80 * np.sin((xx + yy) / 31.0)
    a = np.stack([r, g, b], axis=2) + rng.normal(0, 6, size=(h, w, 3))
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB").save(str(path), "JPEG", quality=quality)
    return str(path)
