"""A simulated ``atc`` (host side): the real command line in, a simulated ``.om`` out.

Run it exactly like atc (``python3 deploy/sandbox/ascend/atc_sim.py --model=m.onnx --framework=5
--output=out/m --soc_version=Ascend310 ...``, or install it on PATH as ``atc``). It takes the
flags real atc takes (``--flag=value``, ``--flag value``; gflags also accepts ``-flag``), refuses
unknown ones with gflags' message, converts ONNX (``--framework=5``) only, and writes
``<output>.om`` in the format of ``runtime/acl/simom.py``: the ONNX graph plus what atc bakes in
(input shapes or dynamic batch gears, fp16 inputs, static AIPP, output types). Flags that only
tune code generation on a real NPU (precision_mode, fusion switches, ...) are accepted and
recorded. Output dims come from one ONNX Runtime run of the graph on zeros.
Exit status: 0 success, 1 failure (message on stderr, like atc's ``E10001: ...`` lines).
"""

import importlib.util
import os
import re
import sys
from pathlib import Path

_RUNTIME = Path(__file__).resolve().parent / "runtime" / "acl"

SUPPORTED = {
    "model",
    "weight",
    "framework",
    "output",
    "soc_version",
    "input_shape",
    "input_format",
    "insert_op_conf",
    "input_fp16_nodes",
    "output_type",
    "out_nodes",
    "dynamic_batch_size",
    "log",
    "mode",
}
ACCEPTED = {  # real atc flags that change nothing a simulated model can show
    "precision_mode",
    "op_select_implmode",
    "optypelist_for_implmode",
    "fusion_switch_file",
    "enable_small_channel",
    "keep_dtype",
    "host_env_os",
    "host_env_cpu",
    "buffer_optimize",
    "auto_tune_mode",
    "op_debug_level",
    "enable_single_stream",
    "modify_mixlist",
    "customize_dtypes",
    "op_precision_mode",
    "status_check",
    "debug_dir",
    "op_compiler_cache_mode",
    "op_compiler_cache_dir",
    "core_type",
    "aicore_num",
    "compression_optimize_conf",
    "is_input_adjust_hw_layout",
    "is_output_adjust_hw_layout",
    "input_shape_range",
    "dump_mode",
    "save_original_model",
}
UNSIMULATED = {"dynamic_image_size", "dynamic_dims", "singleop", "json", "om", "external_weight"}
SOC_VERSIONS = {
    "Ascend310",
    "Ascend310B1",
    "Ascend310B4",
    "Ascend310P1",
    "Ascend310P3",
    "Ascend910A",
    "Ascend910B",
}
_ONNX_TYPES = {
    1: ("FLOAT", "float32"),
    10: ("FLOAT16", "float16"),
    2: ("UINT8", "uint8"),
    3: ("INT8", "int8"),
    6: ("INT32", "int32"),
    7: ("INT64", "int64"),
    11: ("DOUBLE", "float64"),
    9: ("BOOL", "bool"),
    4: ("UINT16", "uint16"),
    5: ("INT16", "int16"),
    12: ("UINT32", "uint32"),
    13: ("UINT64", "uint64"),
}


class AtcSimError(Exception):
    """A conversion failure; the message is atc-style (``E10001: ...``)."""


def _runtime_module(name):
    """Load runtime/acl/<name>.py by path, without importing the simulated ``acl`` package."""
    spec = importlib.util.spec_from_file_location("_atlas_sim_" + name, str(_RUNTIME / (name + ".py")))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


simom = _runtime_module("simom")
aipp_mod = _runtime_module("_aipp")


def parse_argv(argv):
    """{flag: value} from an atc command line (without the program name)."""
    opts, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        m = re.match(r"^--?([A-Za-z_0-9]+)(?:=(.*))?$", arg, re.S)
        if not m:
            raise AtcSimError(f"ERROR: unexpected argument {arg!r} (atc takes --flag=value)")
        name, value = m.group(1), m.group(2)
        if name not in SUPPORTED | ACCEPTED | UNSIMULATED | {"help", "version"}:
            raise AtcSimError(f"ERROR: unknown command line flag '{name}'")
        if name in UNSIMULATED:
            raise AtcSimError(f"E10001: --{name} is a real atc option the simulated atc does not implement")
        if value is None and name not in ("help", "version"):
            if i + 1 >= len(argv):
                raise AtcSimError(f"ERROR: flag '{name}' is missing its argument")
            i, value = i + 1, argv[i + 1]
        opts[name] = value
        i += 1
    return opts


def _require(opts, name):
    if not opts.get(name):
        raise AtcSimError(f"E10004: Argument [--{name}] is required.")
    return opts[name]


def _check_options(opts):
    framework = _require(opts, "framework")
    if framework != "5":
        what = {"0": "Caffe", "1": "MindSpore", "3": "TensorFlow"}.get(framework, "framework " + framework)
        raise AtcSimError(
            f"E10001: the simulated atc converts ONNX only (--framework=5); {what} needs the real CANN atc"
        )
    soc = _require(opts, "soc_version")
    if soc not in SOC_VERSIONS:
        raise AtcSimError(f"E10001: Value [{soc}] for parameter [--soc_version] is invalid.")
    if opts.get("mode", "0") != "0":
        raise AtcSimError("E10001: the simulated atc supports --mode=0 (model conversion) only")
    if opts.get("log", "null") not in ("debug", "info", "warning", "error", "null"):
        raise AtcSimError("E10001: Value [{}] for parameter [--log] is invalid.".format(opts["log"]))
    fmt = opts.get("input_format", "NCHW")
    if fmt not in ("NCHW", "NHWC", "ND"):
        raise AtcSimError(f"E10001: Value [{fmt}] for parameter [--input_format] is invalid.")
    model = Path(_require(opts, "model"))
    if not model.is_file():
        raise AtcSimError(f"E10001: Value [{model}] for parameter [--model] is invalid: file not found")
    _require(opts, "output")
    if "weight" in opts:
        raise AtcSimError("E10001: --weight applies to Caffe models only")
    return model


def _shapes(text):
    shapes = {}
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        name, _, dims = part.rpartition(":")
        try:
            shapes[name.strip()] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise AtcSimError(f"E10002: Value [{part}] for parameter [--input_shape] is invalid.") from None
    return shapes


def _gears(opts, shapes):
    text = opts.get("dynamic_batch_size")
    if not text:
        if any(d < 0 for dims in shapes.values() for d in dims):
            raise AtcSimError(
                "E10001: --input_shape has -1 but no --dynamic_batch_size (or other dynamic option)"
            )
        return None
    try:
        gears = sorted({int(g) for g in text.split(",")})
    except ValueError:
        raise AtcSimError(
            f"E10001: Value [{text}] for parameter [--dynamic_batch_size] is invalid."
        ) from None
    if not gears or gears[0] < 1 or len(gears) > 100:
        raise AtcSimError("E10001: --dynamic_batch_size needs 1..100 positive gears")
    if not any(dims and dims[0] == -1 for dims in shapes.values()):
        raise AtcSimError("E10001: --dynamic_batch_size needs -1 as the batch of an --input_shape entry")
    return gears


def _inputs(graph, opts, shapes, gears):
    """The header's input specs (AIPP and fp16 applied), in graph order."""
    initializers = {init.name for init in graph.initializer}
    fp16 = [n.strip() for n in (opts.get("input_fp16_nodes") or "").split(";") if n.strip()]
    aipp = _read_aipp(opts["insert_op_conf"]) if opts.get("insert_op_conf") else None
    specs = []
    for value in graph.input:
        if value.name in initializers:
            continue
        elem = value.type.tensor_type.elem_type
        acl_name, np_name = _ONNX_TYPES.get(elem, (None, None))
        if acl_name is None:
            raise AtcSimError(f"E10001: input {value.name} has an unsupported ONNX type {elem}")
        dims = shapes.get(value.name) or _static_dims(value)
        spec = {
            "name": value.name,
            "onnx_name": value.name,
            "dtype": acl_name,
            "onnx_dtype": np_name,
            "format": opts.get("input_format", "NCHW"),
            "dims": dims,
            "aipp": None,
        }
        if value.name in fp16:
            spec["dtype"] = "FLOAT16"
        if aipp is not None and not specs:
            _attach_aipp(spec, aipp, fp16)
        specs.append(spec)
    unknown = set(shapes) - {s["name"] for s in specs} | set(fp16) - {s["name"] for s in specs}
    if unknown:
        raise AtcSimError(
            "E10016: input name(s) {} do not exist in the model".format(", ".join(sorted(unknown)))
        )
    if gears:
        specs.append(
            {
                "name": simom.MBATCH_INPUT,
                "onnx_name": None,
                "dtype": "INT64",
                "format": "ND",
                "dims": [1],
                "aipp": None,
            }
        )
    return specs


_AIPP_UNSIMULATED = ("padding", "resize", "single_line_mode", "ax_swap_switch")


def _read_aipp(path):
    """The one static aipp_op block of an --insert_op_conf file, refusing what is not simulated."""
    try:
        blocks = aipp_mod.parse_blocks(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise AtcSimError(f"E10001: --insert_op_conf {path}: {exc}") from None
    if len(blocks) != 1:
        raise AtcSimError(f"E10001: --insert_op_conf {path}: the simulated atc takes one aipp_op block "
                          f"(for the first input), not {len(blocks)}")  # fmt: skip
    aipp = blocks[0][0]
    if aipp.get("aipp_mode", "static") != "static":
        raise AtcSimError("E10001: the simulated atc supports aipp_mode static only")
    if aipp.get("related_input_rank", "0") != "0":
        raise AtcSimError("E10001: the simulated atc applies AIPP to the first input only (related_input_rank 0)")
    on = [k for k in _AIPP_UNSIMULATED if aipp_mod.is_on(aipp, k)]
    if on:
        raise AtcSimError(f"E10001: AIPP {', '.join(on)} is not simulated")
    return aipp


def _round_through_fp16(graph, inputs):
    """Put the 310's fp16 rounding of float inputs into the graph: two Cast nodes (float32 ->
    float16 -> float32) in front of each float32 input, marked ``fp16_in_graph`` in its spec.
    ONNX Runtime then rounds inside the model's own run (bit for bit numpy's casts, which the
    runtime applies to inputs without the mark, e.g. of models converted before); done with
    numpy on every execution, the rounding cost the host ~0.3 ms a 224x224 image, time a real
    NPU does not take from the host CPU. Skipped for a graph with subgraphs (they may read the
    input by name) and for an input that is also a graph output."""
    from onnx import AttributeProto, TensorProto, helper

    if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return
    outputs = {o.name for o in graph.output}
    for spec in inputs:
        name = spec["onnx_name"]
        if name is None or spec.get("onnx_dtype") != "float32" or name in outputs:
            continue
        half, rounded = name + "__acl_sim_fp16", name + "__acl_sim_fp16_rounded"
        for node in graph.node:
            node.input[:] = [rounded if x == name else x for x in node.input]
        graph.node.insert(0, helper.make_node("Cast", [half], [rounded], to=TensorProto.FLOAT, name=rounded))
        graph.node.insert(0, helper.make_node("Cast", [name], [half], to=TensorProto.FLOAT16, name=half))
        spec["fp16_in_graph"] = True


def _static_dims(value):
    dims = []
    for d in value.type.tensor_type.shape.dim:
        if not d.HasField("dim_value") or d.dim_value <= 0:
            raise AtcSimError(f"E10001: input {value.name} has a dynamic dimension: give it in --input_shape")
        dims.append(d.dim_value)
    return dims


def _attach_aipp(spec, aipp, fp16):
    if spec["name"] in fp16:
        raise AtcSimError(
            "E10001: --input_fp16_nodes and --insert_op_conf cannot both apply to {}".format(spec["name"])
        )
    dims = spec["dims"]
    if len(dims) != 4 or spec["format"] != "NCHW" or dims[1] != 3:
        raise AtcSimError(
            "E10001: AIPP needs a 4-D NCHW 3-channel first input, {} is {}".format(spec["name"], dims)
        )
    fmt = aipp.get("input_format", "")
    if fmt not in ("RGB888_U8", "YUV420SP_U8"):
        raise AtcSimError(f"E10001: AIPP input_format {fmt!r} is not simulated (RGB888_U8, YUV420SP_U8)")
    # 0 or missing sizes come from the model input (--input_shape), as documented
    model = {"w": dims[3], "h": dims[2]}
    for side in ("w", "h"):
        for key in (f"src_image_size_{side}", f"crop_size_{side}"):
            if int(aipp.get(key, "0") or 0) == 0:
                aipp[key] = str(model[side])
    src = (int(aipp["src_image_size_w"]), int(aipp["src_image_size_h"]))
    crop = aipp_mod.is_on(aipp, "crop")
    start = (int(aipp.get("load_start_pos_w", 0)), int(aipp.get("load_start_pos_h", 0))) if crop else (0, 0)
    out = (int(aipp["crop_size_w"]), int(aipp["crop_size_h"])) if crop else src
    if out != (dims[3], dims[2]):
        raise AtcSimError(
            f"E10001: AIPP output {out[0]}x{out[1]} does not match the model input {dims[3]}x{dims[2]}"
        )
    if start[0] + out[0] > src[0] or start[1] + out[1] > src[1]:
        raise AtcSimError(f"E10001: AIPP crop {out[0]}x{out[1]} at {start} leaves the {src[0]}x{src[1]} source")
    if fmt == "YUV420SP_U8" and (src[0] % 2 or src[1] % 2 or start[0] % 2 or start[1] % 2):
        raise AtcSimError("E10001: YUV420SP_U8 needs an even source size and even load_start_pos_w/h")
    spec["aipp"] = aipp
    spec["dtype"] = "UINT8"


def _output_types(opts, names):
    """{graph output name: ACL dtype} from --output_type (all, or per node with --out_nodes)."""
    text = opts.get("output_type")
    types = {}
    if not text:
        return types
    allowed = ("FP32", "FP16")
    if ":" not in text:
        if text not in allowed + ("UINT8", "INT8"):
            raise AtcSimError(f"E10001: Value [{text}] for parameter [--output_type] is invalid.")
        if text not in allowed:
            raise AtcSimError(f"E10001: --output_type={text} (quantised outputs) is not simulated")
        return {n: ("FLOAT" if text == "FP32" else "FLOAT16") for n in names}
    if not opts.get("out_nodes"):
        raise AtcSimError("E10001: a per-node --output_type needs --out_nodes")
    for entry in text.split(";"):
        node, _, kind = entry.rpartition(":")
        if kind not in allowed or node not in opts["out_nodes"].split(";"):
            raise AtcSimError(f"E10001: Value [{entry}] for parameter [--output_type] is invalid.")
        types[node] = "FLOAT" if kind == "FP32" else "FLOAT16"
    return types


def _outputs(proto, opts, inputs, gears):
    """The header's output specs: names from the graph (or --out_nodes), dims and types from one run."""
    import numpy as np
    import onnxruntime as ort

    graph_outputs = [o.name for o in proto.graph.output]
    selected = graph_outputs
    by_node = {}
    if opts.get("out_nodes"):
        producers = {n.name: list(n.output) for n in proto.graph.node}
        selected = []
        for entry in opts["out_nodes"].split(";"):
            node, _, index = entry.rpartition(":")
            outs = producers.get(node, [])
            if not index.isdigit() or int(index) >= len(outs) or outs[int(index)] not in graph_outputs:
                raise AtcSimError(f"E10016: --out_nodes {entry} is not a graph output of the model")
            selected.append(outs[int(index)])
            by_node[outs[int(index)]] = entry
    batch = max(gears) if gears else None
    feed = {}
    for spec in inputs:
        if spec["onnx_name"]:
            dims = [batch if d == -1 else d for d in spec["dims"]]
            feed[spec["onnx_name"]] = np.zeros(dims, dtype=spec["onnx_dtype"])
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(selected, feed)
    types = _output_types(opts, selected)
    specs = []
    for name, value in zip(selected, values, strict=True):
        acl_name = next((a for a, n in _ONNX_TYPES.values() if n == str(value.dtype)), None)
        dims = list(value.shape)
        if gears and dims and dims[0] == batch:
            dims[0] = -1
        dtype = types.get(name) or types.get(by_node.get(name)) or acl_name
        specs.append({"name": name, "onnx_name": name, "dtype": dtype, "format": "ND", "dims": dims})
    return specs


def convert(argv):
    """Run one conversion; returns the written .om path. Raises AtcSimError."""
    import onnx

    opts = parse_argv(argv)
    model = _check_options(opts)
    shapes = _shapes(opts.get("input_shape"))
    gears = _gears(opts, shapes)
    try:
        proto = onnx.load(str(model))
    except Exception as exc:
        raise AtcSimError(f"E19999: cannot parse ONNX model {model}: {exc}") from None
    inputs = _inputs(proto.graph, opts, shapes, gears)
    _round_through_fp16(proto.graph, inputs)
    outputs = _outputs(proto, opts, inputs, gears)
    header = {
        "soc_version": opts["soc_version"],
        "atc_argv": ["atc"] + list(argv),
        "inputs": inputs,
        "outputs": outputs,
        "dynamic_batch": gears,
        "framework": 5,
    }
    out = opts["output"] if opts["output"].endswith(".om") else opts["output"] + ".om"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(simom.dumps(header, proto.SerializeToString()))
    os.replace(tmp, out)
    return Path(out)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(__doc__)
        return 0
    if "--version" in argv:
        print("ATC simulated (atlas-deploy sandbox), no CANN")
        return 0
    print("ATC start working now, please wait for a moment.", flush=True)
    try:
        out = convert(argv)
    except AtcSimError as exc:
        print(str(exc), file=sys.stderr)
        print(
            "ATC run failed, Please check the detail log, Try 'atc --help' for more information",
            file=sys.stderr,
        )
        return 1
    print(f"ATC run success, welcome to the next use. (simulated model: {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
