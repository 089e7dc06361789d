"""EfficientNet-Lite0 as an ONNX graph written directly from its checkpoint: numpy and ``onnx`` only.

The demo's model used to be made by tracing the ``efficientnet-lite-pytorch`` module with torch, which
meant installing torch (several GB from PyPI) to produce a fixed graph once. In eval mode the network
is a static chain that needs no tracing: each convolution followed by BatchNorm is one ``Conv`` with
the BatchNorm folded into its weights and bias, ReLU6 is ``Clip(0, 6)``, a residual is ``Add``, the head
is ``GlobalAveragePool`` + ``Flatten`` + ``Gemm``. TensorFlow-style "same" padding (what the torch
module's ``Conv2dStaticSamePadding`` does for a fixed image size) is computed here and written as the
``Conv``'s explicit, possibly asymmetric ``pads`` -- the same graph the torch export gives after ONNX
Runtime's basic folding, with the same interface: ``input`` (batch, 3, 224, 224) -> ``logits``
(batch, 1000), opset 17, batch dynamic.

The layer table is EfficientNet-Lite0's (``efficientnet_lite_pytorch.utils.efficientnet_lite`` with
width 1.0, depth 1.0, stem and head not scaled, no squeeze-excitation); every tensor of the checkpoint
is checked against it, so weights of another architecture are refused with one line rather than
turned into a wrong model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy.errors import ModelError
from deploy.models.checkpoint import read_state_dict

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BN_EPS = 1e-3  # batch_norm_epsilon of the EfficientNet-Lite family
IR_VERSION = 8  # what torch 2.x writes for opset 17; atc and older ONNX Runtimes read it
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000


@dataclass(frozen=True)
class Stage:
    """One row of the architecture table: ``repeats`` MBConv blocks, the first with ``stride``."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    inp: int
    out: int


LITE0 = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class Block:
    """One MBConv block as built: channels in/out, expanded width, depthwise kernel and stride."""

    index: int
    inp: int
    out: int
    mid: int
    kernel: int
    stride: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.inp == self.out


def blocks(stages: tuple[Stage, ...] = LITE0) -> list[Block]:
    """The table unrolled: the first block of a stage changes width and stride, the rest keep both."""
    out = []
    for st in stages:
        for r in range(st.repeats):
            inp = st.inp if r == 0 else st.out
            out.append(Block(len(out), inp, st.out, inp * st.expand, st.kernel, st.stride if r == 0 else 1))
    return out


def expected_shapes(stages: tuple[Stage, ...] = LITE0) -> dict[str, tuple[int, ...]]:
    """Every tensor name of the checkpoint and its shape (``num_batches_tracked`` left out)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_bn(conv: str, bn: str, cout: int, cin_per_group: int, k: int) -> None:
        shapes[f"{conv}.weight"] = (cout, cin_per_group, k, k)
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{bn}.{p}"] = (cout,)

    conv_bn("_conv_stem", "_bn0", STEM_CHANNELS, 3, 3)
    last = STEM_CHANNELS
    for b in blocks(stages):
        pre = f"_blocks.{b.index}"
        if b.mid != b.inp:
            conv_bn(f"{pre}._expand_conv", f"{pre}._bn0", b.mid, b.inp, 1)
        conv_bn(f"{pre}._depthwise_conv", f"{pre}._bn1", b.mid, 1, b.kernel)
        conv_bn(f"{pre}._project_conv", f"{pre}._bn2", b.out, b.mid, 1)
        last = b.out
    conv_bn("_conv_head", "_bn1", HEAD_CHANNELS, last, 1)
    shapes["_fc.weight"] = (NUM_CLASSES, HEAD_CHANNELS)
    shapes["_fc.bias"] = (NUM_CLASSES,)
    return shapes


def check_architecture(state: dict[str, np.ndarray], source: Path) -> None:
    """ModelError (one line) unless ``state`` holds exactly EfficientNet-Lite0's float tensors."""
    want = expected_shapes()
    have = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if tuple(have[k].shape) != want[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} of the wrong shape (e.g. {k} is {tuple(have[k].shape)}, not {want[k]})")
    if problems:
        raise ModelError(f"weights {source} are not EfficientNet-Lite0: tensors {', '.join(problems)}")
    for k in want:
        if have[k].dtype.kind != "f":
            raise ModelError(f"weights {source} are not EfficientNet-Lite0: {k} holds {have[k].dtype}, not floats")


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow "SAME" for one spatial axis: (pad before, pad after, output size); the odd pixel goes
    after, as in ``Conv2dStaticSamePadding``."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


def fold_bn(weight: np.ndarray, state: dict[str, np.ndarray], bn: str) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight and bias with BatchNorm ``bn`` (eval mode) folded in, computed in float64."""
    gamma = state[f"{bn}.weight"].astype(np.float64)
    beta = state[f"{bn}.bias"].astype(np.float64)
    mean = state[f"{bn}.running_mean"].astype(np.float64)
    var = state[f"{bn}.running_var"].astype(np.float64)
    scale = gamma / np.sqrt(var + BN_EPS)
    w = weight.astype(np.float64) * scale[:, None, None, None]
    b = beta - mean * scale
    return w.astype(np.float32), b.astype(np.float32)


class _Graph:
    """Collects nodes and initializers; names follow the torch module paths so the graphs read alike."""

    def __init__(self, onnx, state: dict[str, np.ndarray]):
        self.onnx = onnx
        self.state = state
        self.nodes: list = []
        self.inits: list = []
        self.inits.append(onnx.numpy_helper.from_array(np.array(0.0, np.float32), "relu6_min"))
        self.inits.append(onnx.numpy_helper.from_array(np.array(6.0, np.float32), "relu6_max"))

    def conv_bn(self, x: str, conv: str, bn: str, size: int, stride: int, group: int, relu6: bool) -> tuple[str, int]:
        """``Conv`` (BatchNorm folded, same padding) [+ ``Clip``]; returns the output and its spatial size."""
        helper = self.onnx.helper
        w, b = fold_bn(self.state[f"{conv}.weight"], self.state, bn)
        k = w.shape[-1]
        before, after, out_size = same_pads(size, k, stride)
        self.inits.append(self.onnx.numpy_helper.from_array(w, f"{conv}.weight_folded"))
        self.inits.append(self.onnx.numpy_helper.from_array(b, f"{conv}.bias_folded"))
        path = "/" + conv.replace("._", "/_")
        y = f"{path}/Conv_output_0"
        self.nodes.append(
            helper.make_node(
                "Conv", [x, f"{conv}.weight_folded", f"{conv}.bias_folded"], [y], name=f"{path}/Conv",
                dilations=[1, 1], group=group, kernel_shape=[k, k], pads=[before, before, after, after],
                strides=[stride, stride],
            )  # fmt: skip
        )
        if relu6:
            z = f"{path}/Clip_output_0"
            self.nodes.append(helper.make_node("Clip", [y, "relu6_min", "relu6_max"], [z], name=f"{path}/Clip"))
            y = z
        return y, out_size


def build_lite0(state: dict[str, np.ndarray], source: Path, image_size: int = 224, opset: int = 17):
    """The ``onnx.ModelProto`` of EfficientNet-Lite0 with ``state``'s weights (checked first)."""
    onnx = _import_onnx()
    from onnx import TensorProto, helper

    check_architecture(state, source)
    g = _Graph(onnx, state)
    x, size = g.conv_bn(INPUT_NAME, "_conv_stem", "_bn0", image_size, 2, 1, relu6=True)
    for b in blocks():
        pre = f"_blocks.{b.index}"
        inp = x
        if b.mid != b.inp:
            x, _ = g.conv_bn(x, f"{pre}._expand_conv", f"{pre}._bn0", size, 1, 1, relu6=True)
        x, size = g.conv_bn(x, f"{pre}._depthwise_conv", f"{pre}._bn1", size, b.stride, b.mid, relu6=True)
        x, _ = g.conv_bn(x, f"{pre}._project_conv", f"{pre}._bn2", size, 1, 1, relu6=False)
        if b.residual:
            y = f"/{pre}/Add_output_0"
            g.nodes.append(helper.make_node("Add", [x, inp], [y], name=f"/{pre}/Add"))
            x = y
    x, _ = g.conv_bn(x, "_conv_head", "_bn1", size, 1, 1, relu6=True)
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["/_avg_pooling/Pool_output_0"], name="/_avg_pooling/Pool"))
    g.nodes.append(helper.make_node("Flatten", ["/_avg_pooling/Pool_output_0"], ["/Flatten_output_0"], name="/Flatten", axis=1))
    g.inits.append(onnx.numpy_helper.from_array(state["_fc.weight"].astype(np.float32), "_fc.weight"))
    g.inits.append(onnx.numpy_helper.from_array(state["_fc.bias"].astype(np.float32), "_fc.bias"))
    g.nodes.append(
        helper.make_node("Gemm", ["/Flatten_output_0", "_fc.weight", "_fc.bias"], [OUTPUT_NAME], name="/_fc/Gemm",
                         alpha=1.0, beta=1.0, transB=1)  # fmt: skip
    )
    graph = helper.make_graph(
        g.nodes,
        "efficientnet_lite0",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, image_size, image_size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", NUM_CLASSES])],
        initializer=g.inits,
    )
    model = helper.make_model(
        graph, producer_name="atlas-deploy", producer_version="efficientnet.py",
        opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION,
    )  # fmt: skip
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # a bug here, not bad input: check_architecture passed
        raise ModelError(f"the EfficientNet-Lite0 graph built from {source} is invalid: {exc}") from None
    return model


def lite0_onnx_bytes(weights: Path, image_size: int = 224, opset: int = 17) -> bytes:
    """The serialized ONNX model of EfficientNet-Lite0 from the checkpoint at ``weights``."""
    weights = Path(weights)
    return build_lite0(read_state_dict(weights), weights, image_size, opset).SerializeToString()


def _import_onnx():
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401
    except ImportError:
        raise ModelError("the onnx package is not installed: pip install '.[models]'") from None
    return onnx
