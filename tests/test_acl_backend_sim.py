"""agent/backends/acl.py against the simulated pyACL: one test per finding of issue 10 (each
fails on the acl.py before the fix)."""

import json
import threading

import aclsim
import numpy as np
import pytest

from agent import job as jobmod
from agent.backends import BackendError
from agent.backends.acl import AclBackend
from agent.runner import execute


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tinyb")
    onnx_path, weights = aclsim.tiny_onnx(d / "tiny.onnx")
    om = aclsim.build(onnx_path, d / "fixed", "--input_shape=input:2,3,8,8")
    return onnx_path, weights, d, om


def _x(*levels):
    return np.stack([np.full((3, 8, 8), v, np.float32) for v in levels])


def _expect(weights, *levels):
    return _x(*levels).mean(axis=(2, 3)) @ weights


def _in_thread(fn, timeout=15):
    """Run ``fn`` on a thread; (result, exception). A hang fails the test instead of the suite."""
    box = {}

    def run():
        try:
            box["result"] = fn()
        except Exception as exc:
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn.__name__} did not return within {timeout} s"
    return box.get("result"), box.get("error")


def _live(acl, kind):
    return [h for h, (k, _) in acl._core.STATE.handles.items() if k == kind]


def test_1_run_from_another_thread_binds_the_context(monkeypatch, tiny):
    _, weights, _, om = tiny
    acl = aclsim.fresh_acl(monkeypatch)
    b = AclBackend(acl_module=acl).load(str(om))
    out, err = _in_thread(lambda: b.run(_x(1, 2)))
    assert err is None, err
    np.testing.assert_allclose(out[0], _expect(weights, 1, 2), rtol=2e-3)
    _, err = _in_thread(b.close)
    assert err is None and acl.STATE.finalized


def test_2_failed_launch_callback_delivers_instead_of_hanging(monkeypatch, tiny):
    _, weights, _, om = tiny
    acl = aclsim.fresh_acl(monkeypatch, ACL_SIM_FAIL="launch_callback:1", ACL_SIM_SYNC_TIMEOUT_S="5")
    b = AclBackend(acl_module=acl, async_mode=True, callback_interval=2, pool_size=3).load(str(om))
    got = {}

    def feed():
        for i in range(5):
            b.submit(_x(i, i + 1), i, lambda tag, outs, err: got.__setitem__(tag, (outs, err)))
        b.drain()

    _, err = _in_thread(feed)
    assert err is None, err
    assert sorted(got) == list(range(5)) and all(e is None for _, e in got.values())
    for i, (outs, _) in got.items():
        np.testing.assert_allclose(outs[0], _expect(weights, i, i + 1), rtol=2e-3)
    assert b.launch_failures and "507000" in b.launch_failures[0]
    b.close()


def test_3_dead_report_thread_fails_drain_at_once(monkeypatch, tiny):
    om = tiny[3]
    acl = aclsim.fresh_acl(
        monkeypatch, ACL_SIM_FAIL="set_context:2", ACL_SIM_SYNC_TIMEOUT_S="5"
    )  # 1: submit binds, 2: the report thread
    b = AclBackend(acl_module=acl, async_mode=True, callback_interval=1, drain_timeout_s=30).load(str(om))
    errors = []
    _, err = _in_thread(lambda: (b.submit(_x(1, 1), 0, lambda *a: errors.append(a)), b.drain()), timeout=4)
    assert isinstance(err, BackendError) and "report thread" in str(err) and "set_context" in str(err)


def test_4_dynamic_batch_model_runs_at_a_gear(monkeypatch, tiny):
    onnx_path, weights, d, _ = tiny
    om = aclsim.build(onnx_path, d / "dyn", "--input_shape=input:-1,3,8,8", "--dynamic_batch_size=1,2,4")
    acl = aclsim.fresh_acl(monkeypatch)
    b = AclBackend(acl_module=acl, batch=2).load(str(om))
    assert b.inputs[0].shape == (2, 3, 8, 8) and b.outputs[0].shape == (2, 4)
    np.testing.assert_allclose(b.run(_x(3, 4))[0], _expect(weights, 3, 4), rtol=2e-3)
    b.close()


def test_5_output_dtypes_are_read_as_what_they_are(monkeypatch, tiny, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    onnx_path, weights, _, _ = tiny
    model = onnx.load(str(onnx_path))
    model.graph.node.append(helper.make_node("Cast", ["logits"], ["counts"], to=TensorProto.UINT16))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("counts", TensorProto.UINT16, ["batch", 4]))
    onnx.save(model, str(tmp_path / "u16.onnx"))
    om = aclsim.build(tmp_path / "u16.onnx", tmp_path / "u16", "--input_shape=input:2,3,8,8")
    acl = aclsim.fresh_acl(monkeypatch)
    b = AclBackend(acl_module=acl).load(str(om))
    out = b.run(_x(10, 20))[0]
    assert out.dtype == np.uint16 and out.tolist() == _expect(weights, 10, 20).astype(np.uint16).tolist()
    b.close()
    from agent.backends.acl_codes import dtype_name

    with pytest.raises(BackendError, match="aclDataType 13"):
        dtype_name(13, "output 0")


def _aipp_om(tiny, name, fmt):
    onnx_path, _, d, _ = tiny
    cfg = d / f"{name}.cfg"
    cfg.write_text(f"aipp_op {{\n aipp_mode : static\n input_format : {fmt}\n src_image_size_w : 8\n"
                   " src_image_size_h : 8\n csc_switch : false\n}\n")  # fmt: skip
    return aclsim.build(onnx_path, d / name, "--input_shape=input:1,3,8,8", f"--insert_op_conf={cfg}")


def test_6_yuv420sp_aipp_model_is_refused_with_the_reason(monkeypatch, tiny):
    om = _aipp_om(tiny, "yuv", "YUV420SP_U8")
    acl = aclsim.fresh_acl(monkeypatch)
    with pytest.raises(BackendError, match="YUV420SP_U8.*RGB888_U8"):
        AclBackend(acl_module=acl).load(str(om))
    assert not acl._core.STATE.device_mem


def test_7_float_batch_into_a_uint8_model_is_refused(monkeypatch, tiny):
    om = _aipp_om(tiny, "rgb", "RGB888_U8")
    acl = aclsim.fresh_acl(monkeypatch)
    b = AclBackend(acl_module=acl).load(str(om))
    assert b.inputs[0].dtype == "uint8" and b.inputs[0].shape == (1, 8, 8, 3)
    with pytest.raises(BackendError, match="float32.*uint8"):
        b.run(np.full((1, 8, 8, 3), 300.0, np.float32))
    assert b.run(np.full((1, 8, 8, 3), 200, np.uint8))[0][0, 0] == pytest.approx(200, rel=1e-3)
    b.close()


def test_8_outputs_are_copied_once_without_staging(monkeypatch, tiny):
    om = tiny[3]
    acl = aclsim.fresh_acl(monkeypatch)
    calls = []
    for name in ("malloc", "malloc_host", "memcpy"):
        real = getattr(acl.rt, name)
        monkeypatch.setattr(acl.rt, name, lambda *a, _n=name, _f=real: calls.append(_n) or _f(*a))
    for name in ("ptr_to_bytes", "ptr_to_numpy"):
        monkeypatch.setattr(acl.util, name, lambda *a, _n=name: calls.append(_n))
    b = AclBackend(acl_module=acl).load(str(om))
    assert calls == ["malloc", "malloc"]  # input and output buffers only
    b.run(_x(1, 1))
    assert calls[2:] == ["memcpy", "memcpy"]  # in, and out straight into host memory
    b.close()


def test_9_repeat_initialize_leaves_finalize_to_the_owner(monkeypatch, tiny):
    acl = aclsim.fresh_acl(monkeypatch)
    assert acl.init() == 0  # another part of the process owns acl
    b = AclBackend(acl_module=acl).load(str(tiny[3]))
    b.close()
    assert acl.rt.set_device(0) == 0  # still initialised
    assert acl.finalize() == 0


def test_10_no_leak_when_add_dataset_buffer_fails_and_codes_have_names(monkeypatch, tiny):
    acl = aclsim.fresh_acl(monkeypatch, ACL_SIM_FAIL="add_dataset_buffer:2:107000")
    with pytest.raises(BackendError, match="add_dataset_buffer.*107000 .ACL_ERROR_RT_PARAM_INVALID"):
        AclBackend(acl_module=acl).load(str(tiny[3]))
    assert _live(acl, "databuf") == [] and _live(acl, "dataset") == [] and not acl._core.STATE.device_mem
    acl = aclsim.fresh_acl(monkeypatch, ACL_SIM_FAIL="execute:1")
    b = AclBackend(acl_module=acl).load(str(tiny[3]))
    with pytest.raises(BackendError, match="507011 .ACL_ERROR_RT_MODEL_EXECUTE"):
        b.run(_x(1, 1))
    b.close()


def test_11_async_mode_from_the_job(monkeypatch, tmp_path):
    demo = aclsim.require_demo_model()
    om = aclsim.build(demo, tmp_path / "eff", "--input_shape=input:2,3,224,224")
    acl = aclsim.fresh_acl(monkeypatch)
    calls = []
    real = acl.mdl.execute_async
    monkeypatch.setattr(acl.mdl, "execute_async", lambda *a: calls.append(1) or real(*a))
    job = jobmod.from_dict({
        "run_id": "acl-async", "mode": "run", "release": str(aclsim.REPO), "out_dir": str(tmp_path / "out"),
        "model": str(om), "backend": "acl", "labels": "demo/labels/imagenet_classes.txt",
        "inputs": ["demo/images"], "batch": 2, "labelled": False,
        "preprocess": {"preset": "imagenet", "scale": 1.0, "mean": [127] * 3, "std": [128] * 3},
        "backend_options": {"async": True, "callback_interval": 2, "buffers": 2},
    })  # fmt: skip
    assert execute(job, echo=False, handle_signals=False) == 0
    recs = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    top = {r["image"]: r["topk"][0][0] for r in recs}
    assert top["coffee.jpg"] == 967 and top["chelsea.jpg"] in range(281, 286)
    assert len(calls) == 3  # 6 photos, batch 2, all through execute_async
    with pytest.raises(jobmod.JobError, match="unknown backend option"):
        jobmod.from_dict({**json.loads(job.to_json()), "backend_options": {"asynch": True}})


def test_async_callbacks_keep_their_interval_when_every_buffer_is_in_flight(monkeypatch, tiny):
    """A callback holds the device's stream while it runs (ACL_CALLBACK_BLOCK): with one already
    on its way to free buffers, submit waits for it rather than launching one for fewer
    executions (which left a simulated NPU idle more often)."""
    acl = aclsim.fresh_acl(monkeypatch, ACL_SIM_DEVICE_MS_PER_IMAGE="2")  # 4 ms per batch of 2
    sizes = []
    real = acl.rt.launch_callback
    monkeypatch.setattr(
        acl.rt, "launch_callback", lambda fn, data, *a: sizes.append(len(data)) or real(fn, data, *a)
    )
    b = AclBackend(acl_module=acl, async_mode=True, callback_interval=3).load(str(tiny[3]))  # 7 buffers
    got = []

    def feed():
        for i in range(12):
            b.submit(_x(i, i), i, lambda tag, outs, err: got.append((tag, err)))
        b.drain()

    _, err = _in_thread(feed)
    assert err is None, err
    assert sorted(tag for tag, _ in got) == list(range(12)) and all(e is None for _, e in got)
    assert sizes == [3, 3, 3, 3]
    b.close()
