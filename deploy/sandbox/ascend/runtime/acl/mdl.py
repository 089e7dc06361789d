"""``acl.mdl``: model loading, descriptions, datasets and execution of the simulated runtime.

Descriptions and datasets are host-side objects (no context needed); load, execute, unload and
set_dynamic_batch_size need acl.init and a current context. Getters that return a bare value
give 0 / "" for an invalid description or index, as the C API does. Python 3.7.
"""

import numpy as np

from . import _core as C
from . import _memory as M
from . import _model
from ._model import DTYPES, FORMATS


def _load(data, what):
    model, ret = _model.load(data, C.STATE.soc_version, what)
    return (C.new_handle("model", model), ret) if model is not None else (0, ret)


def load_from_file(model_path):
    """(model_id, ret). 100003 for an unreadable file, 100013 for one that is not a (valid)
    simulated model or was built for another soc_version."""
    ret = C.check_ready() or C.fault("load_from_file")
    if ret:
        return 0, ret
    try:
        with open(model_path, "rb") as f:
            data = f.read()
    except (OSError, TypeError) as exc:
        return 0, C.fail(C.ACL_ERROR_INVALID_FILE, f"load_from_file: cannot read {model_path!r}: {exc}")
    return _load(data, model_path)


def load_from_mem(model, model_size):
    ret = C.check_ready() or C.fault("load_from_mem")
    if ret:
        return 0, ret
    place = M.locate(model, model_size)
    if place is None:
        return 0, C.fail(C.ACL_ERROR_INVALID_PARAM, f"load_from_mem: not {model_size} bytes of known memory")
    return _load(M.read(place, model_size), "load_from_mem")


def unload(model_id):
    ret = C.check_ready()
    if ret:
        return ret
    if not C.drop("model", model_id):
        return C.fail(C.ACL_ERROR_INVALID_MODEL_ID, f"unload: no model {model_id!r}")
    return C.ACL_SUCCESS


def create_desc():
    return C.new_handle("desc", {"model": None})


def destroy_desc(model_desc):
    return (
        C.ACL_SUCCESS
        if C.drop("desc", model_desc)
        else C.fail(C.ACL_ERROR_INVALID_PARAM, "destroy_desc: bad desc")
    )


def get_desc(model_desc, model_id):
    desc, model = C.lookup("desc", model_desc), C.lookup("model", model_id)
    if desc is None:
        return C.fail(C.ACL_ERROR_INVALID_PARAM, "get_desc: bad desc")
    if model is None:
        return C.fail(C.ACL_ERROR_INVALID_MODEL_ID, f"get_desc: no model {model_id!r}")
    desc["model"] = model
    return C.ACL_SUCCESS


def _spec(model_desc, index, kind):
    desc = C.lookup("desc", model_desc)
    model = desc and desc["model"]
    if model is None:
        return None, None
    specs = model.inputs if kind == "in" else model.outputs
    if not isinstance(index, int) or not 0 <= index < len(specs):
        return model, None
    return model, specs[index]


def get_num_inputs(model_desc):
    desc = C.lookup("desc", model_desc)
    return len(desc["model"].inputs) if desc and desc["model"] else 0


def get_num_outputs(model_desc):
    desc = C.lookup("desc", model_desc)
    return len(desc["model"].outputs) if desc and desc["model"] else 0


def get_input_size_by_index(model_desc, index):
    model, spec = _spec(model_desc, index, "in")
    return model.size(spec) if spec else 0


def get_output_size_by_index(model_desc, index):
    model, spec = _spec(model_desc, index, "out")
    return model.size(spec) if spec else 0


def _dims(model_desc, index, kind, current=False):
    model, spec = _spec(model_desc, index, kind)
    if spec is None:
        return {}, C.fail(C.ACL_ERROR_INVALID_PARAM, f"get dims: bad desc or index {index!r}")
    batch = None
    if model.gears:
        batch = (model.batch or max(model.gears)) if (current or kind == "out") else None
    dims = model.dims(spec, batch)
    return {"name": spec["name"], "dimCount": len(dims), "dims": dims}, C.ACL_SUCCESS


def get_input_dims(model_desc, index):
    """({"name", "dimCount", "dims"}, ret); a dynamic batch axis is -1."""
    return _dims(model_desc, index, "in")


def get_output_dims(model_desc, index):
    """Output dims at the largest gear of a dynamic-batch model."""
    return _dims(model_desc, index, "out")


def get_cur_output_dims(model_desc, index):
    """Output dims at the gear of the last set_dynamic_batch_size."""
    return _dims(model_desc, index, "out", current=True)


def get_input_data_type(model_desc, index):
    _, spec = _spec(model_desc, index, "in")
    return DTYPES[spec["dtype"]][0] if spec else -1


def get_output_data_type(model_desc, index):
    _, spec = _spec(model_desc, index, "out")
    return DTYPES[spec["dtype"]][0] if spec else -1


def get_input_format(model_desc, index):
    _, spec = _spec(model_desc, index, "in")
    return FORMATS.get("NHWC" if spec.get("aipp") else spec.get("format"), 2) if spec else -1


def get_output_format(model_desc, index):
    _, spec = _spec(model_desc, index, "out")
    return FORMATS.get(spec.get("format"), 2) if spec else -1


def get_input_name_by_index(model_desc, index):
    _, spec = _spec(model_desc, index, "in")
    return spec["name"] if spec else ""


def get_output_name_by_index(model_desc, index):
    _, spec = _spec(model_desc, index, "out")
    return spec["name"] if spec else ""


def _index_by_name(model_desc, name, kind):
    desc = C.lookup("desc", model_desc)
    if not desc or not desc["model"]:
        return 0, C.fail(C.ACL_ERROR_INVALID_PARAM, "get index by name: bad desc")
    specs = desc["model"].inputs if kind == "in" else desc["model"].outputs
    for i, spec in enumerate(specs):
        if spec["name"] == name:
            return i, C.ACL_SUCCESS
    return 0, C.fail(C.ACL_ERROR_INVALID_PARAM, f"the model has no {kind}put named {name!r}")


def get_input_index_by_name(model_desc, name):
    return _index_by_name(model_desc, name, "in")


def get_output_index_by_name(model_desc, name):
    return _index_by_name(model_desc, name, "out")


def get_dynamic_batch(model_desc):
    """({"batchCount": n, "batch": [gears]}, ret); batchCount 0 for a fixed-batch model."""
    desc = C.lookup("desc", model_desc)
    if not desc or not desc["model"]:
        return {}, C.fail(C.ACL_ERROR_INVALID_PARAM, "get_dynamic_batch: bad desc")
    gears = list(desc["model"].gears or [])
    return {"batchCount": len(gears), "batch": gears}, C.ACL_SUCCESS


def set_dynamic_batch_size(model_id, dataset, index, batch_size):
    """Write the gear into the dataset's ``ascend_mbatch_shape_data`` buffer (device memory)."""
    ret = C.check_ready()
    if ret:
        return ret
    model, buffers = C.lookup("model", model_id), C.lookup("dataset", dataset)
    if model is None or buffers is None:
        return C.fail(C.ACL_ERROR_INVALID_PARAM, "set_dynamic_batch_size: bad model or dataset")
    if not model.gears:
        return C.fail(C.ACL_ERROR_MODEL_NOT_DYNAMIC, "set_dynamic_batch_size: the model has no dynamic batch")
    if batch_size not in model.gears or not isinstance(index, int) or not 0 <= index < len(buffers):
        return C.fail(
            C.ACL_ERROR_INVALID_PARAM,
            f"set_dynamic_batch_size: batch {batch_size} not in {model.gears} or bad index",
        )
    buf = C.lookup("databuf", buffers[index])
    view = M.device_view(buf[0], 8) if buf and buf[1] >= 8 else None
    if view is None:
        return C.fail(
            C.ACL_ERROR_INVALID_PARAM,
            f"set_dynamic_batch_size: input {index} is not 8 bytes of device memory",
        )
    view[:] = np.array([batch_size], dtype=np.int64).tobytes()
    model.batch = batch_size
    return C.ACL_SUCCESS


def create_dataset():
    return C.new_handle("dataset", [])


def destroy_dataset(dataset):
    """Destroys the dataset only: its data buffers (and their memory) stay the caller's."""
    if not C.drop("dataset", dataset):
        return C.fail(C.ACL_ERROR_INVALID_PARAM, f"destroy_dataset: bad dataset {dataset!r}")
    return C.ACL_SUCCESS


def add_dataset_buffer(dataset, data_buffer):
    """(dataset, ret)."""
    ret = C.fault("add_dataset_buffer")
    if ret:
        return dataset, ret
    buffers = C.lookup("dataset", dataset)
    if buffers is None or C.lookup("databuf", data_buffer) is None:
        return dataset, C.fail(C.ACL_ERROR_INVALID_PARAM, "add_dataset_buffer: bad dataset or data buffer")
    buffers.append(data_buffer)
    return dataset, C.ACL_SUCCESS


def get_dataset_num_buffers(dataset):
    buffers = C.lookup("dataset", dataset)
    return len(buffers) if buffers is not None else 0


def get_dataset_buffer(dataset, index):
    """The index-th data buffer, or 0 (NULL) when out of range."""
    buffers = C.lookup("dataset", dataset)
    if buffers is None or not isinstance(index, int) or not 0 <= index < len(buffers):
        return 0
    return buffers[index]


def _buffers(dataset):
    """[(ptr, size)] of a dataset's live data buffers (a snapshot), or None."""
    handles = C.lookup("dataset", dataset)
    if handles is None:
        return None
    out = []
    for h in handles:
        buf = C.lookup("databuf", h)
        if buf is None:
            return None
        out.append((buf[0], buf[1]))
    return out


def _prepare(model_id, input_, output):
    """(model, in_bufs, out_bufs, 0) or (.., code)."""
    model = C.lookup("model", model_id)
    if model is None:
        return (
            None,
            None,
            None,
            C.fail(C.ACL_ERROR_INVALID_MODEL_ID, f"execute: no model {model_id!r}"),
        )
    ins, outs = _buffers(input_), _buffers(output)
    if ins is None or outs is None:
        return None, None, None, C.fail(C.ACL_ERROR_INVALID_PARAM, "execute: bad input or output dataset")
    if len(ins) != len(model.inputs):
        return (
            None,
            None,
            None,
            C.fail(
                C.ACL_ERROR_MODEL_INPUT_NOT_MATCH,
                f"execute: the model has {len(model.inputs)} inputs, the dataset {len(ins)}",
            ),
        )
    if len(outs) != len(model.outputs):
        return (
            None,
            None,
            None,
            C.fail(
                C.ACL_ERROR_MODEL_OUTPUT_NOT_MATCH,
                f"execute: the model has {len(model.outputs)} outputs, the dataset {len(outs)}",
            ),
        )
    return model, ins, outs, 0


def execute(model_id, input_, output):
    """Synchronous execution; the outputs are in device memory when it returns 0."""
    ret = C.check_ready() or C.fault("execute")
    if ret:
        return ret
    model, ins, outs, ret = _prepare(model_id, input_, output)
    return ret or model.execute(ins, outs)


def execute_async(model_id, input_, output, stream):
    """Queue an execution on ``stream`` and return at once; it runs after the work queued before
    it. The buffer addresses are taken now; the data when the device gets to it. A failure on
    the device is reported by synchronize_stream."""
    ret = C.check_ready() or C.fault("execute_async")
    if ret:
        return ret
    stream_obj = C.lookup("stream", stream)
    if stream_obj is None:
        return C.fail(C.ACL_ERROR_INVALID_PARAM, f"execute_async: bad stream {stream!r}")
    model, ins, outs, ret = _prepare(model_id, input_, output)
    if ret:
        return ret
    stream_obj.put(lambda ready_at: model.execute_at(ins, outs, ready_at))
    return C.ACL_SUCCESS


def create_data_buffer(data, size):
    """A data buffer describing ``size`` bytes at ``data`` (not checked until used), or 0."""
    if not isinstance(data, int) or not isinstance(size, int) or size < 0:
        C.fail(C.ACL_ERROR_INVALID_PARAM, "create_data_buffer: bad pointer or size")
        return 0
    return C.new_handle("databuf", [data, size])


def destroy_data_buffer(data_buffer):
    if not C.drop("databuf", data_buffer):
        return C.fail(C.ACL_ERROR_INVALID_PARAM, f"destroy_data_buffer: bad data buffer {data_buffer!r}")
    return C.ACL_SUCCESS


def get_data_buffer_addr(data_buffer):
    buf = C.lookup("databuf", data_buffer)
    return buf[0] if buf else 0


def get_data_buffer_size(data_buffer):
    buf = C.lookup("databuf", data_buffer)
    return buf[1] if buf else 0


def update_data_buffer(data_buffer, data, size):
    buf = C.lookup("databuf", data_buffer)
    if buf is None or not isinstance(data, int) or not isinstance(size, int):
        return C.fail(C.ACL_ERROR_INVALID_PARAM, "update_data_buffer: bad arguments")
    buf[:] = [data, size]
    return C.ACL_SUCCESS
