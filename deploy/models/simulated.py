"""The simulated .om a sandbox Atlas board runs, built from ``app.models.onnx`` and cached.

A sandbox board with an Ascend target (``target: atlas200dk``) has the simulated pyACL, which loads
only simulated models. So that such a board works from the inventory a CPU board uses, the push
converts ``app.models.onnx`` with the command line ``deploy model convert ONNX --target T --aipp app``
builds (:func:`deploy.models.atc.plan_conversion`), run by the simulated atc, into
``.deploy/models/<stem>.<soc>.om`` (:func:`deploy.release.variant.simulated_om_path`), where
:func:`deploy.release.variant.model_for` finds it.

**With AIPP, from app.preprocess**, as Huawei's flow does (seed 000's atc command has
``--insert_op_conf``): the model's input is then uint8 pixels, the agent feeds its resized and cropped
image unnormalised, and the normalisation runs inside the model execution, so the simulated DK
exercises the agent's uint8 path and the simulator's AIPP, which a real DK with a vendor-converted
model exercises too, and a quarter of the bytes cross into device memory. ``raw-u8`` apps (the model
normalises itself) get no AIPP. With ``app.backend_options.decode: dvpp`` the AIPP input is
YUV420SP_U8 (the pictures DVPP makes, converted to RGB by the AIPP's CSC), in ``<stem>.<soc>.yuv.om``. The batch is fixed at ``app.batch``, as ``--input_shape`` does in the
samples.

**Cache.** A stamp ``<om>.json`` beside the model holds the build key (sha256 of the onnx file, the
atc argv, the AIPP config and the simulator's own source) and the "source" that ``model_for`` checks
without hashing (:func:`deploy.release.variant.simulated_om_source`). A second call with the same key converts
nothing; an onnx that was only touched gets a fresh stamp, not a new conversion.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from ..errors import ModelSpecError
from ..inventory import App, Board
from ..release import variant
from ..release.hashcache import file_sha256
from ..targets import Target
from . import atc

# The simulator files a simulated model's bytes depend on: a change to them rebuilds cached models.
_SIMULATOR_FILES = (
    atc.SIMULATED_ATC,
    atc.SIMULATED_ATC.parent / "runtime" / "acl" / "simom.py",
    atc.SIMULATED_ATC.parent / "runtime" / "acl" / "_aipp.py",
)


def prepare_model(
    app: App, target: Target, board: Board, state_dir: Path, progress: Callable[[str], None] | None = None
) -> Path:
    """:func:`deploy.release.variant.model_for`, building the simulated .om first when a sandbox Atlas board needs it."""
    try:
        return variant.model_for(app, target, board, state_dir)
    except variant.SimulatedModelNeeded:
        ensure_simulated_om(app, target, state_dir, progress)
        return variant.model_for(app, target, board, state_dir)


def ensure_simulated_om(
    app: App, target: Target, state_dir: Path, progress: Callable[[str], None] | None = None
) -> Path:
    """The simulated .om of ``app.models.onnx`` for ``target``'s chip, converted unless the cached one
    has the same build key. ``progress`` gets the simulated atc's output lines.

    ModelSpecError when there is no onnx or the target has no Ascend chip; AtcError when the
    conversion fails (the simulated atc's reason in one line).
    """
    if target.backend == "magicmind":  # a sandbox MLU board: the simulated MagicMind build instead
        from .magicmind import ensure_simulated

        return ensure_simulated(app, target, state_dir, progress)
    onnx = app.models.get("onnx")
    if onnx is None or not onnx.is_file():
        raise ModelSpecError(f"no app.models.onnx to build a simulated .om from ({onnx or 'not set'})")
    if not target.soc_version:
        raise ModelSpecError(f"target {target.name} has no Ascend chip: there is no .om to simulate")
    out = variant.simulated_om_path(state_dir, onnx, target, yuv=variant.dvpp_decode(app))
    plan = atc.plan_conversion(
        onnx,
        target.name,
        soc_version=target.soc_version,
        aipp=atc.aipp_from_preprocess(app.preprocess, yuv=variant.dvpp_decode(app)),
        output=out,
        batch=app.batch,
    )
    return variant.cached_build(out, app, _build_key(onnx, plan), plan.argv,
                                lambda: atc.run_conversion(plan, progress, simulate=True))


def _build_key(onnx: Path, plan: atc.AtcPlan) -> str:
    """sha256 over what the simulated model's bytes depend on."""
    parts = {
        "onnx": file_sha256(onnx),
        "argv": plan.argv,
        "aipp": plan.aipp_config,
        "simulator": [file_sha256(p) if p.is_file() else None for p in _SIMULATOR_FILES],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
