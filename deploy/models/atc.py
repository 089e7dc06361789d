"""Build (and, where the CANN toolkit is installed, run) the `atc` command that turns a model into an `.om`.

`atc` only exists inside Huawei's CANN toolkit, on an x86_64 or aarch64 Linux machine; the boards
themselves cannot convert. So this module is split the pyinfra way: `plan_conversion` computes the
exact argv (and the AIPP config text) from a model spec without touching anything, and
`run_conversion` executes a plan. When `atc` is missing the plan is still useful: the CLI prints
the command for the user to run on a machine that has the toolkit.

`run_conversion(plan, simulate=True)` runs the same argv through the simulated atc of the sandbox
(`deploy/sandbox/ascend/atc_sim.py`), which writes a simulated model that only the simulated
runtime of sandbox Atlas boards loads. It runs as a program, like the real atc: this package
never imports the sandbox (docs/ARCHITECTURE.md).

Option meanings follow Ascend/samples `growthpath/junior-level/3_model_conversion` and the
hiascend ATC parameter pages (see shared notes, section 3). Flag spelling is `--name=value`, the
form every documented example uses.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import proc
from ..errors import AtcError, AtcNotFound, ConversionError, ModelSpecError
from ..targets import PROFILES
from .aipp import (  # noqa: F401 - re-exported
    AIPP_PRESETS,
    AippPreset,
    aipp_config,
    aipp_from_preprocess,
    check_aipp_fits,
    read_aipp_file,
)

# Target name -> ATC --soc_version. An .om only loads on the SoC it was built for
# ("ModelCheckCompatibility failed ... socVersion"), so this must match the board.
# deploy/targets.py is the long-term home for target profiles; this table is the ATC view of them.
# Ascend targets from the deploy profiles, plus cards that only `atc` needs to know about.
SOC_VERSIONS: dict[str, str] = {
    **{name: t.soc_version for name, t in PROFILES.items() if t.soc_version},
    "atlas300i-duo": "Ascend310P3",  # the ais_bench/ResNet34 seed's card (x86 server, not a deploy target)
}

# File type -> ATC --framework code.
FRAMEWORK_CAFFE = 0
FRAMEWORK_MINDSPORE = 1
FRAMEWORK_TENSORFLOW = 3
FRAMEWORK_ONNX = 5
_FRAMEWORKS = {
    ".prototxt": FRAMEWORK_CAFFE,
    ".caffemodel": FRAMEWORK_CAFFE,
    ".air": FRAMEWORK_MINDSPORE,
    ".pb": FRAMEWORK_TENSORFLOW,
    ".onnx": FRAMEWORK_ONNX,
}
# ATC's own default layout per framework. MindSpore .air carries its layout, so none is passed.
_DEFAULT_INPUT_FORMAT = {
    FRAMEWORK_CAFFE: "NCHW",
    FRAMEWORK_MINDSPORE: None,
    FRAMEWORK_TENSORFLOW: "NHWC",
    FRAMEWORK_ONNX: "NCHW",
}
_INPUT_FORMATS = ("NCHW", "NHWC", "ND", "NCDHW", "NDHWC")
_OUTPUT_TYPES = ("FP32", "FP16", "UINT8", "INT8")
_LOG_LEVELS = ("debug", "info", "warning", "error", "null")

# The simulated atc (a script; run, never imported) and what it needs on this host.
SIMULATED_ATC = Path(__file__).resolve().parents[1] / "sandbox" / "ascend" / "atc_sim.py"
_SIMULATED_ATC_NEEDS = ("numpy", "onnx", "onnxruntime")
# atc prints the reason of a failure as an error-coded line (E10001: ...) among generic ones.
_ATC_REASON = re.compile(r"^\s*(E[0-9A-Z]\d{4}:|ERROR)")

# Exit codes the CLI uses for these failures (documented here so the CLI owner and the README
# agree): a bad model spec is a usage error; "atc is not installed, here is the command" did not
# produce an .om, so it must not look like success to a script (`&&` chains, CI). The exception
# classes live in deploy/errors.py (they are DeployErrors) and are re-exported from here.
EXIT_SPEC_ERROR = ModelSpecError.exit_code  # 2
EXIT_ATC_NOT_FOUND = AtcNotFound.exit_code  # 3
EXIT_ATC_FAILED = AtcError.exit_code  # 1


@dataclass(frozen=True)
class AtcPlan:
    """One conversion, fully decided: run `argv` after writing `aipp_config` to `aipp_path`."""

    argv: list[str]
    output: Path  # the .om atc will write
    aipp_config: str | None = None
    aipp_path: Path | None = None

    @property
    def command(self) -> str:
        """The argv as one shell-pasteable line (what the CLI prints when atc is absent)."""
        return shlex.join(self.argv)


def soc_version_for(target: str) -> str:
    """ATC --soc_version for a target name; unknown targets are a spec error naming the known ones."""
    try:
        return SOC_VERSIONS[target]
    except KeyError:
        known = ", ".join(sorted(SOC_VERSIONS))
        raise ModelSpecError(f"no ATC soc_version for target {target!r} (known: {known})") from None


def _framework(model: Path) -> int:
    try:
        return _FRAMEWORKS[model.suffix.lower()]
    except KeyError:
        known = ", ".join(sorted(_FRAMEWORKS))
        raise ModelSpecError(
            f"cannot tell the framework of {model.name!r}: expected one of {known}"
        ) from None


def _caffe_pair(model: str, weight: str | os.PathLike | None) -> tuple[str, str]:
    """Caffe needs the .prototxt (graph) and the .caffemodel (weights); either may be the one given."""
    path = Path(model)
    if path.suffix.lower() == ".caffemodel":
        if weight is not None:
            raise ModelSpecError("give the .prototxt as the model and the .caffemodel as the weight")
        weight = model
        model = str(path.with_suffix(".prototxt"))
        if not Path(model).is_file():
            raise ModelSpecError(f"Caffe graph {model} not found next to {path.name}")
    elif weight is None:
        weight = str(path.with_suffix(".caffemodel"))
        if not Path(weight).is_file():
            raise ModelSpecError(
                f"Caffe weights {weight} not found: put them next to the .prototxt or pass --weight"
            )
    elif not Path(weight).is_file():
        raise ModelSpecError(f"Caffe weights {os.fspath(weight)} not found")
    return model, os.fspath(weight)


_SHAPE_ENTRY = re.compile(r"^\s*([^:;]+?)\s*:\s*(-?\d+(?:\s*,\s*-?\d+)*)\s*$")


def parse_input_shape(spec: str | Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """'name:1,3,224,224;other:1,10' (ATC's own syntax) or a mapping -> {name: dims}, in order."""
    if isinstance(spec, Mapping):
        items = [(str(k), tuple(int(d) for d in v)) for k, v in spec.items()]
    else:
        items = []
        for part in spec.split(";"):
            if not part.strip():
                continue
            match = _SHAPE_ENTRY.match(part)
            if not match:
                raise ModelSpecError(f"bad input shape {part.strip()!r}: expected name:n,c,h,w")
            items.append((match.group(1), tuple(int(d) for d in match.group(2).split(","))))
    if not items:
        raise ModelSpecError("empty input shape")
    for name, dims in items:
        if not dims or any(d <= 0 for d in dims):
            raise ModelSpecError(
                f"input {name!r} has a non-fixed shape {dims}: give fixed sizes (e.g. {name}:1,3,224,224)"
            )
    return dict(items)


def _format_shape(shapes: Mapping[str, Sequence[int]]) -> str:
    return ";".join(f"{name}:{','.join(str(d) for d in dims)}" for name, dims in shapes.items())


def onnx_input_shapes(model: Path, *, batch: int = 1) -> dict[str, tuple[int, ...]]:
    """Read the real (non-initializer) inputs of an ONNX model and their shapes.

    A symbolic or zero first dimension is the usual exported dynamic batch; it becomes `batch`.
    Any other symbolic dimension cannot be guessed, so the user must give the shape.
    Needs the `onnx` package (the `models` extra); without it the shape must be given.
    """
    try:
        import onnx
    except ImportError:
        raise ModelSpecError(
            "reading the input shape of an ONNX model needs the onnx package (pip install onnx); "
            "or give the shape as name:n,c,h,w"
        ) from None
    proto = onnx.load(str(model), load_external_data=False)
    initializers = {init.name for init in proto.graph.initializer}
    shapes: dict[str, tuple[int, ...]] = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        dims: list[int] = []
        for index, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                dims.append(dim.dim_value)
            elif index == 0:
                dims.append(batch)
            else:
                raise ModelSpecError(
                    f"ONNX input {value.name!r} has a dynamic dimension {index} "
                    f"({dim.dim_param or '?'}): give the shape as {value.name}:n,c,h,w"
                )
        shapes[value.name] = tuple(dims)
    if not shapes:
        raise ModelSpecError(f"{model.name} declares no inputs")
    return shapes


def _hw(dims: Sequence[int], input_format: str | None) -> tuple[int, int] | None:
    """(w, h) of an image input, if the shape is 4-D in a known layout."""
    if len(dims) != 4:
        return None
    if input_format == "NHWC":
        return dims[2], dims[1]
    return dims[3], dims[2]


def _split_nodes(nodes: str | Iterable[str]) -> list[str]:
    if isinstance(nodes, str):
        nodes = nodes.split(";")
    return [n.strip() for n in nodes if n and n.strip()]


def _strip_om(output: str) -> str:
    return output[:-3] if output.lower().endswith(".om") else output


def plan_conversion(
    model: str | os.PathLike,
    target: str = "atlas200dk",
    *,
    weight: str | os.PathLike | None = None,
    input_shape: str | Mapping[str, Sequence[int]] | None = None,
    input_format: str | None = None,
    fp16_inputs: str | Iterable[str] = (),
    output_type: str | None = "FP32",
    out_nodes: str | Iterable[str] = (),
    aipp: str | Mapping[str, object] | os.PathLike | None = None,
    aipp_src_size: tuple[int, int] | None = None,
    output: str | os.PathLike | None = None,
    soc_version: str | None = None,
    log: str | None = "error",
    batch: int = 1,
) -> AtcPlan:
    """Decide the full `atc` invocation for one model; touches nothing but reads the model files.

    Paths are passed to atc as given (relative stays relative), so the command printed for another
    machine reads like the documented examples. `output` is the .om path with or without `.om`
    (atc appends it); by default the model's path without its suffix. `input_format=None` uses the
    framework's ATC default (NCHW for Caffe/ONNX, NHWC for TensorFlow, omitted for MindSpore).
    `output_type`/`log` of None omit the flag. `aipp` is a preset name or mean/std mapping (see
    `aipp_config`), or the path (a `Path`) of an atc AIPP config file, checked and copied next to the
    output; it applies to the model's first input.
    """
    framework, model_str, weight_str = _model_files(model, weight)
    model_path = Path(model_str)
    soc = soc_version or soc_version_for(target)
    input_format = _input_format(input_format, framework)
    shapes = _input_shapes(input_shape, framework, model_path, batch)
    fp16 = _split_nodes(fp16_inputs)
    outs = _output_nodes(out_nodes)
    aipp_text = None if aipp is None else _plan_aipp(aipp, shapes, fp16, input_format, aipp_src_size)
    if output_type is not None:
        _check_output_type(output_type, outs)
    if log is not None and log not in _LOG_LEVELS:
        raise ModelSpecError(f"unknown atc log level {log!r} (known: {', '.join(_LOG_LEVELS)})")

    output_base = _strip_om(os.fspath(output)) if output is not None else str(model_path.with_suffix(""))
    aipp_path = Path(output_base + "_aipp.cfg") if aipp_text is not None else None
    argv = ["atc"] + _flags(
        ("model", model_str),
        ("weight", weight_str),
        ("framework", framework),
        ("output", output_base),
        ("soc_version", soc),
        ("input_format", input_format),
        ("input_shape", _format_shape(shapes) if shapes is not None else None),
        ("input_fp16_nodes", ";".join(fp16) or None),
        ("insert_op_conf", aipp_path),
        ("output_type", output_type),
        ("out_nodes", ";".join(outs) or None),
        ("log", log),
    )
    return AtcPlan(argv=argv, output=Path(output_base + ".om"), aipp_config=aipp_text, aipp_path=aipp_path)


def _flags(*pairs: tuple[str, object]) -> list[str]:
    """``--name=value`` (the spelling every documented example uses) for each value that is not None."""
    return [f"--{name}={value}" for name, value in pairs if value is not None]


def _model_files(model: str | os.PathLike, weight: str | os.PathLike | None) -> tuple[int, str, str | None]:
    """The ATC framework code, then the model and (Caffe only) weight paths as atc is to get them."""
    model_str = os.fspath(model)
    model_path = Path(model_str)
    framework = _framework(model_path)
    if not model_path.is_file():
        raise ModelSpecError(f"model file {model_str} not found")
    if framework == FRAMEWORK_CAFFE:
        return (framework, *_caffe_pair(model_str, weight))
    if weight is not None:
        raise ModelSpecError(f"--weight only applies to Caffe models, not {model_path.suffix}")
    return framework, model_str, None


def _input_format(input_format: str | None, framework: int) -> str | None:
    """The layout flag: the framework's ATC default when not given (None for MindSpore: omitted)."""
    if input_format is None:
        return _DEFAULT_INPUT_FORMAT[framework]
    if input_format.upper() not in _INPUT_FORMATS:
        raise ModelSpecError(f"unknown input format {input_format!r} (known: {', '.join(_INPUT_FORMATS)})")
    return input_format.upper()


def _input_shapes(
    input_shape: str | Mapping[str, Sequence[int]] | None, framework: int, model: Path, batch: int
) -> dict[str, tuple[int, ...]] | None:
    """The given shapes, else an ONNX model's own; None when the graph carries them (Caffe, TF, MindSpore)."""
    if input_shape is not None:
        return parse_input_shape(input_shape)
    if framework == FRAMEWORK_ONNX:
        return onnx_input_shapes(model, batch=batch)
    return None


def _output_nodes(out_nodes: str | Iterable[str]) -> list[str]:
    """``--out_nodes`` entries, each checked to be ``name:index``."""
    outs = _split_nodes(out_nodes)
    for node in outs:
        if not re.fullmatch(r"[^:;]+:\d+", node):
            raise ModelSpecError(f"bad output node {node!r}: expected name:index (e.g. prob:0)")
    return outs


def _plan_aipp(
    aipp: str | Mapping[str, object] | os.PathLike,
    shapes: Mapping[str, Sequence[int]] | None,
    fp16: Sequence[str],
    input_format: str | None,
    src_size: tuple[int, int] | None,
) -> str:
    """The AIPP config for the model's first input, sized to it (224x224 when its shape is unknown); a
    config file's own text once it is checked (and its output size against the model's, when known).

    AIPP makes that input UINT8, so it cannot also be an FP16 input.
    """
    aipp_input = next(iter(shapes)) if shapes else None
    if fp16 and (aipp_input is None or aipp_input in fp16):
        which = (
            f"input {aipp_input!r}"
            if aipp_input
            else "the first input (name unknown without an input shape)"
        )
        raise ModelSpecError(
            f"AIPP and --input_fp16_nodes cannot be combined on the same node ({which}): "
            "AIPP makes that input UINT8; drop one of them"
        )
    size = _hw(shapes[aipp_input], input_format) if shapes and aipp_input else None
    if isinstance(aipp, os.PathLike):
        if src_size is not None:
            raise ModelSpecError("an AIPP config file gives its own source size (src_image_size_w/h)")
        cfg = read_aipp_file(aipp)
        check_aipp_fits(cfg, size)
        return cfg.text
    return aipp_config(aipp, model_size=size or (224, 224), src_size=src_size)


def _check_output_type(output_type: str, out_nodes: Sequence[str]) -> None:
    """FP32 for all outputs, or per node 'name:index:TYPE;...', which ATC only accepts with --out_nodes."""
    if ":" not in output_type:
        if output_type not in _OUTPUT_TYPES:
            raise ModelSpecError(f"unknown output type {output_type!r} (known: {', '.join(_OUTPUT_TYPES)})")
        return
    for entry in output_type.split(";"):
        node, _, kind = entry.rpartition(":")
        if kind not in _OUTPUT_TYPES or not re.fullmatch(r"[^:;]+:\d+", node):
            raise ModelSpecError(f"bad per-node output type {entry!r}: expected name:index:TYPE")
        if node not in out_nodes:
            raise ModelSpecError(f"per-node output type for {node!r} needs that node in --out_nodes")


def write_aipp(plan: AtcPlan) -> Path | None:
    """Write the plan's AIPP config where its argv points (also useful before printing the command)."""
    if plan.aipp_config is None or plan.aipp_path is None:
        return None
    plan.aipp_path.parent.mkdir(parents=True, exist_ok=True)
    plan.aipp_path.write_text(plan.aipp_config)
    return plan.aipp_path


def run_conversion(
    plan: AtcPlan, progress: Callable[[str], None] | None = None, *, simulate: bool = False
) -> Path:
    """Run atc for `plan`, streaming each output line to `progress`; return the .om path.

    atc is slow (minutes for a ResNet) and chatty; its last lines hold the reason of a failure
    (e.g. "E10001: Value ... for parameter --soc_version is invalid"), so they travel in AtcError.
    Raises AtcNotFound (with the command) when the CANN toolkit is not on PATH.

    With `simulate`, the simulated atc gets exactly `plan.argv[1:]` instead (whether or not a real
    atc is installed) and the .om it writes is a simulated model: sandbox boards only.
    """
    write_aipp(plan)
    if simulate:
        program = list(_simulated_atc())
    else:
        atc = shutil.which(plan.argv[0])
        if atc is None:
            raise AtcNotFound(plan.command)
        program = [atc]
    plan.output.parent.mkdir(parents=True, exist_ok=True)
    what = "the simulated atc" if simulate else "atc"
    code, tail = proc.stream([*program, *plan.argv[1:]], progress)
    if code != 0:
        raise AtcError(f"{what} exited with status {code}: {_reason(tail)}", tail)
    if not plan.output.is_file():
        raise AtcError(f"{what} reported success but {plan.output} was not written", tail)
    return plan.output


def _simulated_atc() -> tuple[str, str]:
    """This interpreter and the simulated atc script; AtcError when the sandbox or a package is missing."""
    if not SIMULATED_ATC.is_file():
        raise AtcError(f"the simulated atc is not installed with this deploy ({SIMULATED_ATC} is missing)")
    missing = [name for name in _SIMULATED_ATC_NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise AtcError(f"the simulated atc needs {', '.join(missing)} on this host: pip install '.[models]'")
    return sys.executable, str(SIMULATED_ATC)


def _reason(tail: Sequence[str]) -> str:
    """The last error-coded line of atc's output (E10001: ..., ERROR ...), else its last line."""
    coded = [ln.strip() for ln in tail if _ATC_REASON.match(ln)]
    return coded[-1] if coded else proc.last_line(tail, "no output")


__all__ = [
    "AIPP_PRESETS",
    "SOC_VERSIONS",
    "AippPreset",
    "AtcError",
    "AtcNotFound",
    "AtcPlan",
    "ConversionError",
    "ModelSpecError",
    "aipp_config",
    "aipp_from_preprocess",
    "check_aipp_fits",
    "onnx_input_shapes",
    "parse_input_shape",
    "plan_conversion",
    "read_aipp_file",
    "run_conversion",
    "soc_version_for",
    "write_aipp",
]
