"""A simulated pyACL (``import acl``) for sandbox Atlas boards: NOT Huawei's runtime.

It implements the subset of pyACL that Huawei's Python samples (sync and async ResNet-50
``acl_net.py``, acllite) and atlas-deploy's agent use, with pyACL's conventions: ``(value, ret)``
from creators and ``ret`` from actions, the documented error codes, integer handles and
pointers, per-thread contexts, device memory separate from host memory, in-order streams whose
callbacks run only in ``rt.process_report`` of the subscribed thread. Models are simulated
``.om`` files (see ``acl.simom``) executed through ONNX Runtime on the CPU. ``acl.media`` is the
DVPP (JPEG decode/encode, VPC resize/crop/paste on YUV420SP) with the Ascend 310's rules; it
decodes and encodes through Pillow, imported on first use.

Environment: ACL_SIM_RUN_MODE=device|host (default device: ACL_DEVICE, as on the board),
ACL_SIM_SOC_VERSION (default Ascend310), ACL_SIM_DEVICE_COUNT (1), ACL_SIM_FAIL (faults, see
_core), ACL_SIM_DEVICE_MS_PER_IMAGE / ACL_SIM_TIMING_COMPUTE (timing mode, see _model),
ACL_SIM_PTR_API=numpy|bytes (pointer API generation, see util), ACL_SIM_THREADS (ORT threads),
ACL_SIM_SYNC_TIMEOUT_S, ACL_SIM_LOG (print failures on stderr). Python 3.7.
"""

import json
import os
import sys

from . import _core, mdl, media, rt, simom, util  # noqa: F401  (acl.rt / acl.mdl / acl.media / acl.util namespaces)
from ._core import STATE
from .mdl import (  # noqa: F401  (pyACL has these at the top level)
    create_data_buffer,
    destroy_data_buffer,
    get_data_buffer_addr,
    get_data_buffer_size,
    update_data_buffer,
)

SIMULATED = True  # how a caller can tell this module from the real pyACL
get_data_buffer_size_v2 = get_data_buffer_size


def init(config_path=None):
    """Once per process: a second call returns ACL_ERROR_REPEAT_INITIALIZE (100002), also after
    finalize. ``config_path`` (acl.json) must be readable JSON when given."""
    if STATE.initialised or STATE.finalized:
        return _core.fail(_core.ACL_ERROR_REPEAT_INITIALIZE, "acl.init: already initialised in this process")
    if config_path:
        try:
            with open(config_path, encoding="utf-8") as f:
                json.load(f)
        except (OSError, ValueError) as exc:
            return _core.fail(_core.ACL_ERROR_INVALID_FILE, f"acl.init: bad config {config_path}: {exc}")
    STATE.initialised = True
    return _core.ACL_SUCCESS


def finalize():
    """Ends the runtime for the whole process: every later call returns ACL_ERROR_UNINITIALIZE."""
    if not STATE.initialised:
        return _core.fail(
            _core.ACL_ERROR_REPEAT_FINALIZE, "acl.finalize: not initialised, or finalized already"
        )
    STATE.initialised = False
    STATE.finalized = True
    return _core.ACL_SUCCESS


def get_recent_err_msg():
    """The last failure message of the calling thread (pyACL has this from CANN 6), or ""."""
    return getattr(STATE.local, "err", "") or ""


def get_soc_name():
    return STATE.soc_version


def app_log(level, message):
    """acllite's logger calls this; the simulator writes errors (level 3) to stderr only with ACL_SIM_LOG."""
    if os.environ.get("ACL_SIM_LOG") and level >= 3:
        sys.stderr.write(f"[APP] {message}\n")
    return _core.ACL_SUCCESS


def _select_ptr_api():
    api = os.environ.get("ACL_SIM_PTR_API", "")
    hide = {"numpy": ("bytes_to_ptr", "ptr_to_bytes"), "bytes": ("numpy_to_ptr", "ptr_to_numpy")}.get(api, ())
    for name in hide:
        delattr(util, name)


_select_ptr_api()
