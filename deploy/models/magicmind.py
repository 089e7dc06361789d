"""The MagicMind build of a model for a Cambricon target (``deploy model convert ... --target mlu370``).

Seed 003 builds its model with Cambricon's ``gen_model.py`` (magicmind_cloud
``resnext50_caffe/gen_model``): the Parser, a BuilderConfig of JSON strings (archs, precision mode,
NCHW -> NHWC, mutable batch 1..64, ``insert_bn_before_firstnode`` with the normalisation, which
makes the input UINT8), ``Builder.build_model``, ``serialize_to_file``. There is no MagicMind SDK
on this host, so, as with atc, the plan is split from running it (pyinfra's way):
:func:`plan_build` computes that command line with the flags the seed passes, plus ``--onnx_model``
for ONNX networks and ``--mean``/``--std``/``--archs``, which the seed's script hard-codes.

* without ``--simulate``: the command is printed and the exit status is 3 (nothing was built);
* with ``--simulate``: ``deploy/sandbox/cambricon/mm_build_sim.py`` runs that same argv as a
  program (never imported: the core does not import the sandbox) and writes a simulated model,
  which only the simulated runtime of sandbox MLU boards loads.

:func:`ensure_simulated` is the push's path: a sandbox MLU board with only ``app.models.onnx``
gets its simulated model built once from the app's preprocessing and cached under ``.deploy/models``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import proc
from ..errors import ConversionError, MagicMindBuildError, MagicMindSdkMissing, ModelSpecError
from ..inventory import App
from ..release import variant
from ..release.hashcache import file_sha256
from ..targets import Target
from ..targets import get as get_target

SIMULATED_BUILDER = Path(__file__).resolve().parents[1] / "sandbox" / "cambricon" / "mm_build_sim.py"
_SIMULATED_RUNTIME = SIMULATED_BUILDER.parent / "runtime" / "magicmind" / "python" / "runtime"
_NEEDS = ("numpy", "onnx")
MAX_BATCH = 64


@dataclass(frozen=True)
class MmPlan:
    """One build, fully decided: ``argv`` writes ``output``."""

    argv: list[str]
    output: Path
    precision: str
    mean: tuple[float, ...] | None = None  # insert_bn, in pixel units (0..255); None = float input
    std: tuple[float, ...] | None = None

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


def target_for(name: str) -> Target:
    """The Cambricon target ``name``; ModelSpecError for an unknown or non-MagicMind one."""
    try:
        target = get_target(name)
    except KeyError as exc:
        raise ModelSpecError(str(exc.args[0])) from None
    if target.backend != "magicmind":
        raise ModelSpecError(f"target {name} does not run MagicMind models")
    return target


def bn_from_preprocess(
    spec: Mapping[str, object] | str | None,
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) in pixel units for ``insert_bn_before_firstnode`` from a preset name or app.preprocess;
    None when it does not normalise (the model does it itself). ModelSpecError for BGR (insert_bn cannot
    reorder channels) or an invalid spec."""
    from agent.preprocess import PreprocessError, resolve

    if spec is None:
        return None
    try:
        cfg = resolve({"preset": spec} if isinstance(spec, str) else dict(spec))
    except PreprocessError as exc:
        raise ModelSpecError(f"preprocessing cannot go into the model: {exc}") from None
    if not cfg.normalize:
        return None
    if cfg.color != "RGB":
        raise ModelSpecError(
            "insert_bn_before_firstnode cannot reorder channels: the preprocessing must be RGB"
        )
    mean = tuple(round(m / cfg.scale, 6) for m in cfg.mean)
    std = tuple(round(s / cfg.scale, 6) for s in cfg.std)
    return mean, std


def _hw(model: Path) -> tuple[int, int]:
    """The ONNX network's fixed input H, W (224 x 224 when they are symbolic)."""
    from .atc import onnx_input_shapes

    shapes = onnx_input_shapes(model)
    dims = next(iter(shapes.values()), (1, 3, 224, 224))
    h, w = (dims[2], dims[3]) if len(dims) == 4 else (224, 224)
    return (h if h > 0 else 224), (w if w > 0 else 224)


def plan_build(
    model: str | Path,
    target: str,
    *,
    weight: str | Path | None = None,
    precision: str | None = None,
    shape_mutable: bool = True,
    batch: int = 1,
    bn: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    output: str | Path | None = None,
) -> MmPlan:
    """The gen_model.py command line for ``model`` on ``target``; ModelSpecError for a bad spec."""
    t = target_for(target)
    if t.refuses:
        raise ModelSpecError(f"target {t.name}: {t.refuses}")
    model = Path(model)
    precision = precision or t.precisions[0]
    if t.precisions and precision not in t.precisions:
        raise ModelSpecError(
            f"precision {precision} is not one target {t.name} runs ({', '.join(t.precisions)})"
        )
    if not 1 <= int(batch) <= MAX_BATCH:
        raise ModelSpecError(f"batch must be 1..{MAX_BATCH}, not {batch}")
    mutable = "true" if shape_mutable else "false"
    if model.suffix == ".onnx":
        if not model.is_file():
            raise ModelSpecError(f"model not found: {model}")
        h, w = _hw(model)
        net = ["--onnx_model", str(model)]
    elif model.suffix == ".prototxt":
        if not weight:
            raise ModelSpecError("a Caffe network needs --weight NET.caffemodel")
        h, w = 224, 224
        net = ["--caffe_model", str(weight), "--prototxt", str(model)]
    else:
        raise ModelSpecError(
            f"{model}: MagicMind builds here take .onnx or .prototxt (+ --weight .caffemodel)"
        )
    if output is None:  # the seed's naming: ${MODEL_NAME}_model_${PRECISION}_${SHAPE_MUTABLE}_${BATCH}
        output = model.with_name(f"{model.stem}_model_{precision}_{mutable}_{batch}")
    argv = ["python3", "gen_model.py", *net, "--output_model", str(output), "--precision", precision,
            "--shape_mutable", mutable, "--batch_size", str(batch), "--input_width", str(w),
            "--input_height", str(h), "--device_id", "0", "--archs", t.mm_arch or "mtp_372"]  # fmt: skip
    mean = std = None
    if bn is not None:
        mean, std = bn
        argv += ["--mean", ",".join(f"{v:g}" for v in mean), "--std", ",".join(f"{v:g}" for v in std)]
    return MmPlan(argv=argv, output=Path(output), precision=precision, mean=mean, std=std)


def run_build(plan: MmPlan, progress: Callable[[str], None] | None = None, *, simulate: bool = False) -> Path:
    """Run the simulated builder on ``plan.argv`` (``simulate``), else MagicMindSdkMissing with the command."""
    if not simulate:
        raise MagicMindSdkMissing(plan.command)
    if not SIMULATED_BUILDER.is_file():
        raise MagicMindBuildError(
            f"the simulated MagicMind builder is not installed ({SIMULATED_BUILDER} is missing)"
        )
    missing = [n for n in _NEEDS if importlib.util.find_spec(n) is None]
    if missing:
        raise MagicMindBuildError(
            f"the simulated MagicMind builder needs {', '.join(missing)}: pip install '.[models]'"
        )
    plan.output.parent.mkdir(parents=True, exist_ok=True)
    code, tail = proc.stream([sys.executable, str(SIMULATED_BUILDER), *plan.argv[2:]], progress)
    if code != 0:
        errors = [ln.strip() for ln in tail if ln.startswith("ERROR")]
        reason = errors[-1] if errors else proc.last_line(tail, "no output")
        raise MagicMindBuildError(f"the simulated MagicMind builder exited with status {code}: {reason}")
    if not plan.output.is_file():
        raise MagicMindBuildError(
            f"the simulated MagicMind builder reported success but {plan.output} was not written"
        )
    return plan.output


def ensure_simulated(
    app: App, target: Target, state_dir: Path, progress: Callable[[str], None] | None = None
) -> Path:
    """The simulated model of ``app.models.onnx`` for ``target`` (mutable batch, the app's normalisation
    inside, the target's first precision), built unless the cached one has the same build key."""
    onnx = app.models.get("onnx")
    if onnx is None or not onnx.is_file():
        raise ModelSpecError(
            f"no app.models.onnx to build a simulated MagicMind model from ({onnx or 'not set'})"
        )
    out = variant.simulated_om_path(state_dir, onnx, target)
    plan = plan_build(onnx, target.name, bn=bn_from_preprocess(app.preprocess), output=out)
    sim_files = [SIMULATED_BUILDER, _SIMULATED_RUNTIME / "simmm.py"]
    parts = {"onnx": file_sha256(onnx), "argv": plan.argv[2:],
             "builder": [file_sha256(p) if p.is_file() else None for p in sim_files]}  # fmt: skip
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return variant.cached_build(out, app, key, plan.argv, lambda: run_build(plan, progress, simulate=True))


def convert(args, inv_preprocess: Callable[[], Mapping[str, object]], ui, emit_json) -> int:
    """``deploy model convert`` for a MagicMind target: print the build (exit 3) or run it simulated."""
    aipp = args.aipp
    progress = None if args.json else (lambda line: ui.err().print(ui.escape(line)))
    try:
        bn = bn_from_preprocess(inv_preprocess() if aipp == "app" else aipp) if aipp else None
        plan = plan_build(args.model, args.target, weight=args.weight, precision=args.precision,
                          shape_mutable=args.shape_mutable != "false", batch=args.mm_batch or 1, bn=bn,
                          output=args.output)  # fmt: skip
        result = run_build(plan, progress, simulate=args.simulate)
    except MagicMindSdkMissing as exc:
        if args.json:
            emit_json({"converted": False, "command": exc.command})
        else:
            ui.out().print(ui.escape(exc.command), soft_wrap=True)
            ui.err().print(
                "[yellow]not built[/]: no MagicMind SDK here; run the command above with seed 003's "
                "gen_model.py inside Cambricon's magicmind image (source env.sh first)"
            )
        return exc.exit_code
    except ConversionError as exc:
        ui.error_line(str(exc))
        return exc.exit_code
    if args.json:
        emit_json({"converted": True, "output": str(result), "command": plan.command, "simulated": True,
                   "precision": plan.precision})  # fmt: skip
    else:
        ui.out().print(
            f"built: {ui.escape(str(result))} is a SIMULATED MagicMind model ({plan.precision}): it runs "
            "only on sandbox boards (the simulated MagicMind runtime)",
            soft_wrap=True,
        )
    return 0
