"""The simulated MagicMind builder: seed 003's ``gen_model.py`` command line, writing a simulated model.

Takes the command line ``deploy model convert ... --target mlu370`` builds (the flags of
Cambricon's ``resnext50_caffe/gen_model/gen_model.py``, plus ``--onnx_model`` for ONNX networks and
``--mean``/``--std``/``--archs``, which that script hard-codes), and does what the real build
bakes into a model, as graph nodes in front of the network so ONNX Runtime does the work:

* ``--mean/--std`` -> ``insert_bn_before_firstnode`` (var = std^2): the input becomes UINT8;
* ``convert_input_layout`` NCHW -> NHWC (the seed's script always sets it);
* ``--shape_mutable true`` -> ``graph_shape_mutable`` + ``dim_range`` batch 1..64; else the
  batch is fixed at ``--batch_size``;
* ``force_float16`` -> inputs and outputs rounded through fp16; ``force_float32`` as is.

Quantised modes (``qint*``) need ``mm.Calibrator`` over real images: not simulated, refused.
Caffe parsing is not simulated either (ONNX only). Host side: needs onnx (and numpy).
Exit 0 with the model written, 1 with an ``ERROR`` line. Usage: ``python mm_build_sim.py FLAGS``.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "runtime", "magicmind", "python", "runtime"))
import simmm  # noqa: E402  (the runtime's own format module, stdlib only)

PRECISIONS = ("force_float32", "force_float16", "qint8_mixed_float16", "qint8_mixed_float32",
              "qint16_mixed_float16", "qint16_mixed_float32")  # fmt: skip
ARCHS = ("mtp_220", "mtp_270", "mtp_290", "mtp_372", "tp_322", "mtp_322", "mtp_592")
MAX_BATCH = 64  # the seed's dim_range max


class BuildError(Exception):
    pass


def parser():
    p = argparse.ArgumentParser(prog="gen_model.py (simulated)")
    p.add_argument("--onnx_model")
    p.add_argument("--caffe_model")
    p.add_argument("--prototxt")
    p.add_argument("--output_model", required=True)
    p.add_argument("--image_dir", default="")
    p.add_argument("--precision", default="qint8_mixed_float16")
    p.add_argument("--shape_mutable", default="false")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--input_width", type=int, default=224)
    p.add_argument("--input_height", type=int, default=224)
    p.add_argument("--device_id", type=int, default=0)
    p.add_argument("--archs", default="mtp_372")
    p.add_argument("--mean", help="insert_bn mean per channel, a,b,c (the model's input units)")
    p.add_argument("--std", help="insert_bn std per channel, a,b,c (var = std^2)")
    p.add_argument(
        "--input_dtype",
        choices=["UINT8", "FLOAT"],
        help="the input's data type (default: UINT8 with --mean/--std, as insert_bn makes it, else FLOAT)",
    )
    return p


def _floats(text, what):
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        raise BuildError(f"--{what} must be numbers separated by commas, not {text!r}") from None
    if len(vals) == 1:
        vals *= 3
    if len(vals) != 3:
        raise BuildError(f"--{what} needs 1 or 3 values")
    return vals


def _dims(vi):
    return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]


def _check_args(args):
    """The build's settings from the command line (seed 003's gen_model.py flags): archs, mutable, bn."""
    if args.caffe_model or args.prototxt:
        raise BuildError(
            "the simulated builder parses ONNX networks only (Caffe parsing is not simulated): "
            "export the network to ONNX and pass --onnx_model"
        )
    if not args.onnx_model:
        raise BuildError("no network: pass --onnx_model")
    if args.precision not in PRECISIONS:
        raise BuildError(
            "precision [{}] not supported (known: {})".format(args.precision, ", ".join(PRECISIONS))
        )
    if args.precision.startswith("qint"):
        raise BuildError(
            f"precision {args.precision} needs calibration over images (mm.Calibrator), which the simulated builder "
            "does not reproduce: build force_float32 or force_float16"
        )
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    bad = [a for a in archs if a not in ARCHS]
    if bad or not archs:
        raise BuildError("unknown arch {} (known: {})".format(",".join(bad) or "''", ", ".join(ARCHS)))
    mutable = args.shape_mutable.lower() == "true"
    if not mutable and not 1 <= args.batch_size <= MAX_BATCH:
        raise BuildError(f"--batch_size must be 1..{MAX_BATCH}")
    if (args.mean is None) != (args.std is None):
        raise BuildError("--mean and --std go together")
    bn = None
    if args.mean is not None:
        mean, std = _floats(args.mean, "mean"), _floats(args.std, "std")
        if any(s <= 0 for s in std):
            raise BuildError("--std values must be positive")
        bn = {"mean": mean, "var": [s * s for s in std]}
    return archs, mutable, bn


def _image_input(args):
    """The ONNX model and its one NCHW image input, checked against --input_height/--input_width."""
    import onnx

    try:
        model = onnx.load(args.onnx_model)
    except Exception as exc:
        raise BuildError(f"cannot parse {args.onnx_model}: {exc}") from None
    g = model.graph
    inits = {i.name for i in g.initializer}
    real_inputs = [i for i in g.input if i.name not in inits]
    if len(real_inputs) != 1:
        raise BuildError(
            f"the network has {len(real_inputs)} inputs; the simulated builder takes one image input"
        )
    src = real_inputs[0]
    dims = _dims(src)
    if len(dims) != 4 or dims[1] not in (3, -1):
        raise BuildError(f"input {src.name} is {dims}, not an NCHW image with 3 channels")
    h, w = args.input_height, args.input_width
    if (dims[2] > 0 and dims[2] != h) or (dims[3] > 0 and dims[3] != w):
        raise BuildError(f"input {src.name} is {dims[2]}x{dims[3]}, --input_height/--input_width say {h}x{w}")
    return model, src


def _preprocess_nodes(src_name, inner, in_dtype, bn, fp16):
    """The build's own nodes in front of the network: uint8 -> float, NHWC -> NCHW, the normalisation, fp16."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    pre, x, consts = [], src_name, []
    if in_dtype == "UINT8":
        pre.append(helper.make_node("Cast", [x], ["mm_f32"], to=TensorProto.FLOAT))
        x = "mm_f32"
    pre.append(helper.make_node("Transpose", [x], ["mm_nchw"], perm=[0, 3, 1, 2]))
    x = "mm_nchw"
    if bn is not None:
        consts += [numpy_helper.from_array(np.array(bn["mean"], np.float32).reshape(1, 3, 1, 1), "mm_bn_mean"),
                   numpy_helper.from_array((1.0 / np.sqrt(np.array(bn["var"], np.float32))).reshape(1, 3, 1, 1),
                                           "mm_bn_scale")]  # fmt: skip
        pre += [helper.make_node("Sub", [x, "mm_bn_mean"], ["mm_centred"]),
                helper.make_node("Mul", ["mm_centred", "mm_bn_scale"], ["mm_bn"])]  # fmt: skip
        x = "mm_bn"
    if fp16:
        pre += [helper.make_node("Cast", [x], ["mm_in_h"], to=TensorProto.FLOAT16),
                helper.make_node("Cast", ["mm_in_h"], [inner], to=TensorProto.FLOAT)]  # fmt: skip
    else:
        pre.append(helper.make_node("Identity", [x], [inner]))
    return pre, consts


def _output_nodes(g, fp16, batch):
    """fp16 rounding after each output (force_float16), and the outputs' header entries."""
    from onnx import TensorProto, helper

    post, outputs = [], []
    for out in g.output:
        if fp16:
            raw = out.name + "__mm_raw"
            for node in g.node:
                node.output[:] = [raw if y == out.name else y for y in node.output]
                node.input[:] = [raw if y == out.name else y for y in node.input]
            post += [helper.make_node("Cast", [raw], [out.name + "__mm_h"], to=TensorProto.FLOAT16),
                     helper.make_node("Cast", [out.name + "__mm_h"], [out.name], to=TensorProto.FLOAT)]  # fmt: skip
        odims = _dims(out)
        if odims:
            odims[0] = batch
        outputs.append({"name": out.name, "onnx_name": out.name, "dtype": "FLOAT", "dims": odims})
    return post, outputs


def build(args):
    import onnx
    from onnx import TensorProto, helper

    archs, mutable, bn = _check_args(args)
    model, src = _image_input(args)
    g = model.graph
    h, w = args.input_height, args.input_width
    fp16 = args.precision == "force_float16"
    batch = -1 if mutable else args.batch_size
    in_dtype = args.input_dtype or ("UINT8" if bn is not None else "FLOAT")
    # rename the network's input inside the graph, then put the build's own nodes in front of it
    inner = src.name + "__mm_in"
    for node in g.node:
        node.input[:] = [inner if x == src.name else x for x in node.input]
    pre, consts = _preprocess_nodes(src.name, inner, in_dtype, bn, fp16)
    post, outputs = _output_nodes(g, fp16, batch)
    nodes = pre + list(g.node) + post
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(consts)
    elem = TensorProto.UINT8 if in_dtype == "UINT8" else TensorProto.FLOAT
    new_in = helper.make_tensor_value_info(src.name, elem, ["batch" if mutable else batch, h, w, 3])
    index = list(g.input).index(src)
    g.input.remove(src)
    g.input.insert(index, new_in)
    if fp16:
        for out in g.output:
            out.type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.checker.check_model(model)
    header = {
        "name": os.path.basename(args.output_model),
        "archs": archs,
        "precision": args.precision,
        "shape_mutable": mutable,
        "builder_argv": sys.argv[1:],
        "inputs": [
            {
                "name": src.name,
                "onnx_name": src.name,
                "dtype": in_dtype,
                "layout": "NHWC",
                "dims": [batch, h, w, 3],
                "dim_range": {"min": [1, h, w, 3], "max": [MAX_BATCH, h, w, 3]} if mutable else None,
                "insert_bn": bn,
            }
        ],  # fmt: skip
        "outputs": outputs,
    }
    _write(args.output_model, simmm.dumps(header, model.SerializeToString()))
    return header


def _write(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + f".tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main(argv=None):
    args = parser().parse_args(argv)
    print(f"build model... (simulated MagicMind builder: {args.precision} for {args.archs})")
    try:
        header = build(args)
    except BuildError as exc:
        print(f"ERROR {exc}")
        return 1
    print(
        "input_dtype of this model: DataType.{}".format(
            header["inputs"][0]["dtype"].replace("FLOAT", "FLOAT32")
        )
    )
    print(f"Generate model done, model save to {args.output_model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
