"""The simulated pyACL keeps pyACL's conventions: return shapes and codes, per-thread contexts,
separate host/device memory with checked copies, injected faults that do no work, callbacks only
inside process_report of the subscribed thread, in-order streams, and models from the simulated
atc (fp16 inputs, static AIPP incl. YUV420SP, dynamic batch gears)."""

import threading
import time

import aclsim
import numpy as np
import pytest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    onnx_path, weights = aclsim.tiny_onnx(d / "tiny.onnx")
    return onnx_path, weights, d


@pytest.fixture(scope="module")
def tiny_om(tiny):
    onnx_path, _, d = tiny
    return aclsim.build(onnx_path, d / "fixed", "--input_shape=input:2,3,8,8", "--output_type=FP32")


def _ready(acl, init=True):
    assert not init or acl.init() == 0
    assert acl.rt.set_device(0) == 0
    ctx, ret = acl.rt.create_context(0)
    assert ret == 0 and isinstance(ctx, int)
    return ctx


def _device(acl, array):
    """Device memory holding ``array``'s bytes; returns (ptr, size)."""
    data = np.ascontiguousarray(array).tobytes()
    ptr, ret = acl.rt.malloc(len(data), 0)
    assert ret == 0
    assert acl.rt.memcpy(ptr, len(data), acl.util.bytes_to_ptr(data), len(data), 1) == 0
    return ptr, len(data)


def _read(acl, ptr, size, dtype=np.float32):
    host = bytes(size)
    assert acl.rt.memcpy(acl.util.bytes_to_ptr(host), size, ptr, size, 2) == 0
    return np.frombuffer(host, dtype)


def _dataset(acl, *bufs):
    ds = acl.mdl.create_dataset()
    for ptr, size in bufs:
        _, ret = acl.mdl.add_dataset_buffer(ds, acl.create_data_buffer(ptr, size))
        assert ret == 0
    return ds


def _load(acl, path):
    model_id, ret = acl.mdl.load_from_file(str(path))
    assert ret == 0, acl.get_recent_err_msg()
    desc = acl.mdl.create_desc()
    assert acl.mdl.get_desc(desc, model_id) == 0
    return model_id, desc


def test_init_once_per_process_and_uninitialised_calls(monkeypatch):
    acl = aclsim.fresh_acl(monkeypatch)
    assert acl.rt.malloc(16, 0) == (0, 100001)  # ACL_ERROR_UNINITIALIZE
    assert acl.rt.get_run_mode() == (0, 0)  # ACL_DEVICE on the board, no init needed
    assert acl.init() == 0
    assert acl.init() == 100002  # ACL_ERROR_REPEAT_INITIALIZE
    assert acl.finalize() == 0
    assert acl.finalize() == 100037  # ACL_ERROR_REPEAT_FINALIZE
    assert acl.init() == 100002 and acl.rt.set_device(0) == 100001


def test_context_is_per_thread(monkeypatch):
    acl = aclsim.fresh_acl(monkeypatch)
    assert acl.init() == 0
    assert acl.rt.malloc(16, 0)[1] == 107002  # ACL_ERROR_RT_CONTEXT_NULL before set_device
    ctx = _ready(acl, init=False)
    assert acl.rt.malloc(16, 0)[1] == 0
    seen = {}

    def worker():
        seen["before"] = acl.rt.malloc(16, 0)[1]
        seen["set"] = acl.rt.set_context(ctx)
        seen["after"] = acl.rt.malloc(16, 0)[1]

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"before": 107002, "set": 0, "after": 0}
    assert acl.rt.set_context(12345) == 100000  # not a context handle


def test_memcpy_checks_sizes_and_copies_between_separate_memories(monkeypatch):
    acl = aclsim.fresh_acl(monkeypatch)
    _ready(acl)
    src = np.arange(16, dtype=np.uint8)
    dev, size = _device(acl, src)
    assert dev >= 1 << 60  # device addresses are their own space
    host = bytes(16)
    hptr = acl.util.bytes_to_ptr(host)
    assert acl.rt.memcpy(hptr, 8, dev, 16, 2) == 100000  # count > dest_max: an error, not a partial copy
    assert host == bytes(16)
    assert acl.rt.memcpy(hptr, 16, dev + 8, 16, 2) == 107000  # past the end of the device region
    assert acl.rt.memcpy(hptr, 16, 0xDEAD0, 16, 2) == 107000  # not allocated memory
    assert acl.rt.memcpy(hptr, 16, dev, 16, 9) == 100000  # unknown kind
    assert acl.rt.memcpy(hptr, 16, dev, 16, 2) == 0
    assert host == src.tobytes()  # pyACL writes into the bytes object itself
    arr = np.zeros(16, np.uint8)
    assert acl.rt.memcpy(acl.util.numpy_to_ptr(arr), 16, dev, 16, 2) == 0
    np.testing.assert_array_equal(arr, src)
    arr[:] = 99  # host memory changed: device memory did not
    assert _read(acl, dev, 16, np.uint8).tolist() == list(range(16))
    assert acl.rt.free(dev) == 0 and acl.rt.free(dev) == 100000
    hbuf, ret = acl.rt.malloc_host(16)
    assert ret == 0 and acl.rt.free(hbuf) == 100000 and acl.rt.free_host(hbuf) == 0


def test_injected_faults_fail_with_their_code_and_do_no_work(monkeypatch, tiny_om):
    acl = aclsim.fresh_acl(monkeypatch, ACL_SIM_FAIL="malloc:2,memcpy:3,execute:1")
    _ready(acl)
    assert acl.rt.malloc(64, 0)[1] == 0
    assert acl.rt.malloc(64, 0) == (0, 207001)  # ACL_ERROR_RT_MEMORY_ALLOCATION, no pointer
    model_id, desc = _load(acl, tiny_om)
    x = np.ones((2, 3, 8, 8), np.float32)
    inp, isize = _device(acl, x)  # memcpy 1
    out, _ = acl.rt.malloc(32, 0)
    host = bytes(32)
    assert acl.rt.memcpy(acl.util.bytes_to_ptr(host), 32, inp, 32, 2) == 0  # memcpy 2
    marker = np.full(8, 7, np.float32).tobytes()
    assert acl.rt.memcpy(out, 32, acl.util.bytes_to_ptr(marker), 32, 1) == 507013  # memcpy 3: injected
    ins, outs = _dataset(acl, (inp, isize)), _dataset(acl, (out, 32))
    assert acl.mdl.execute(model_id, ins, outs) == 507011  # ACL_ERROR_RT_MODEL_EXECUTE
    assert not _read(acl, out, 32).any()  # neither the copy nor the execution wrote anything
    assert acl.mdl.execute(model_id, ins, outs) == 0
    assert _read(acl, out, 32).reshape(2, 4)[0].tolist() == [1, 2, 3, 4]
    assert "injected" in acl.get_recent_err_msg() or acl.get_recent_err_msg() == ""


def test_callbacks_run_only_in_process_report_of_the_subscribed_thread(monkeypatch):
    acl = aclsim.fresh_acl(monkeypatch)
    ctx = _ready(acl)
    stream, _ = acl.rt.create_stream()
    ran = []
    assert acl.rt.launch_callback(lambda d: ran.append(d), "x", 1, stream) == 100034  # not subscribed
    gate = threading.Event()
    stop = threading.Event()
    codes = []

    def report(args):
        acl.rt.set_context(args[0])
        gate.wait()
        while not stop.is_set():
            codes.append(acl.rt.process_report(args[1]))

    tid, ret = acl.util.start_thread(report, [ctx, 20])
    assert ret == 0 and acl.rt.subscribe_report(tid, stream) == 0
    assert acl.rt.subscribe_report(tid + 1, stream) == 100033  # one report thread per stream
    assert acl.rt.launch_callback(lambda d: ran.append((d, threading.get_ident())), "x", 1, stream) == 0
    time.sleep(0.1)
    assert ran == []  # queued, but nobody processes reports yet
    assert acl.rt.process_report(10) == 100035  # this thread is not subscribed: not run here
    assert ran == []
    gate.set()
    assert acl.rt.synchronize_stream(stream) == 0
    assert ran == [("x", tid)]
    stop.set()
    assert acl.rt.unsubscribe_report(tid, stream) == 0 and acl.util.stop_thread(tid) == 0
    assert 100036 in codes or 0 in codes  # timeouts are ACL_ERROR_WAIT_CALLBACK_TIMEOUT


def test_execute_async_returns_at_once_and_completes_in_order(monkeypatch, tiny_om):
    acl = aclsim.fresh_acl(monkeypatch, ACL_SIM_DEVICE_MS_PER_IMAGE="15", ACL_SIM_TIMING_COMPUTE="1")
    ctx = _ready(acl)
    model_id, _ = _load(acl, tiny_om)
    stream, _ = acl.rt.create_stream()
    done_at_callback = []
    stop = threading.Event()

    def report(args):
        acl.rt.set_context(args[0])
        while not stop.is_set():
            acl.rt.process_report(args[1])

    tid, _ = acl.util.start_thread(report, [ctx, 20])
    acl.rt.subscribe_report(tid, stream)
    outs = []
    t0 = time.monotonic()
    for k in range(4):
        inp = _device(acl, np.full((2, 3, 8, 8), k + 1, np.float32))
        out = (acl.rt.malloc(32, 0)[0], 32)
        outs.append(out)
        assert acl.mdl.execute_async(model_id, _dataset(acl, inp), _dataset(acl, out), stream) == 0
        if k == 1:  # runs after executions 0 and 1, before 2 and 3
            acl.rt.launch_callback(
                lambda o: done_at_callback.extend(_read(acl, p, s)[0] for p, s in o), outs[:], 1, stream
            )
    queued = time.monotonic() - t0
    assert acl.rt.synchronize_stream(stream) == 0
    elapsed = time.monotonic() - t0
    assert queued < 0.06 and elapsed >= 4 * 2 * 0.015  # 15 ms per image, batch 2, on the device thread
    assert done_at_callback == [1.0, 2.0]
    assert [_read(acl, p, s)[0] for p, s in outs] == [1.0, 2.0, 3.0, 4.0]
    stop.set()
    acl.rt.unsubscribe_report(tid, stream)
    acl.util.stop_thread(tid)


def test_timing_mode_device_keeps_its_own_timeline(monkeypatch):
    """Queued work runs back to back on the device's clock, however late the Python thread that
    simulates the device gets to it (a busy host must not slow a simulated NPU down)."""
    acl = aclsim.fresh_acl(monkeypatch)
    npu = acl._model.Npu()
    queued = time.monotonic() - 1.0  # two executions queued a second ago, picked up only now
    first = npu.occupy(0.004, ready_at=queued)
    second = npu.occupy(0.004, ready_at=queued)
    assert first == pytest.approx(queued + 0.004) and second == pytest.approx(queued + 0.008)
    before = time.monotonic()
    third = npu.occupy(0.004)  # ready now: ends 4 ms from now, and occupy returns only then
    assert before + 0.004 <= third <= time.monotonic()


def test_fp16_rounding_is_numpys_casts_bit_for_bit(monkeypatch):
    acl = aclsim.fresh_acl(monkeypatch)
    # around zero, float32 and float16 subnormals, 2**-14, 1, float16's max, overflow, inf, nan
    edges = [0, 0x00000001, 0x33000000, 0x387FC000, 0x38800000, 0x3F800000, 0x477FE000, 0x477FF000]
    edges += [0x7F7FFFFF, 0x7F800000, 0x7FC00000, 0x7FFFFFFF]
    bits = np.concatenate([np.arange(e - 4096, e + 4096, dtype=np.int64) for e in edges])
    bits = np.concatenate([bits, np.random.RandomState(0).randint(0, 2**32, 1 << 16, dtype=np.int64)])
    bits = (bits % 2**32).astype(np.uint32)
    x = np.concatenate([bits, bits | np.uint32(0x80000000)]).view(np.float32).reshape(4, -1)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(np.float16).astype(np.float32)
    got = acl._model.fp16_rounded(x)
    assert got.shape == x.shape and got.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


def _run(acl, model_id, desc, x, batch=None):
    """Execute once with ``x`` as input 0 (and the dynamic batch input when the model has one)."""
    data = np.ascontiguousarray(x)
    size_in = acl.mdl.get_input_size_by_index(desc, 0)
    inp = (acl.rt.malloc(size_in, 0)[0], size_in)
    raw = data.tobytes()
    assert acl.rt.memcpy(inp[0], size_in, acl.util.bytes_to_ptr(raw), len(raw), 1) == 0
    bufs = [inp]
    idx, ret = acl.mdl.get_input_index_by_name(desc, "ascend_mbatch_shape_data")
    if ret == 0:
        bufs.append((acl.rt.malloc(8, 0)[0], 8))
    ins = _dataset(acl, *bufs)
    size_out = acl.mdl.get_output_size_by_index(desc, 0)
    out = (acl.rt.malloc(size_out, 0)[0], size_out)
    if batch is not None:
        assert acl.mdl.set_dynamic_batch_size(model_id, ins, idx, batch) == 0
    code = acl.mdl.execute(model_id, ins, _dataset(acl, out))
    return code, _read(acl, *out)


def test_model_file_errors_are_codes_with_a_reason(monkeypatch, tiny_om, tmp_path):
    acl = aclsim.fresh_acl(monkeypatch)
    _ready(acl)
    assert acl.mdl.load_from_file(str(tmp_path / "missing.om")) == (0, 100003)
    cut = tmp_path / "cut.om"
    cut.write_bytes(tiny_om.read_bytes()[:-10])
    assert acl.mdl.load_from_file(str(cut)) == (0, 100013)
    assert "truncated" in acl.get_recent_err_msg()
    assert aclsim.atc().simom.is_simulated(tiny_om) and not aclsim.atc().simom.is_simulated(
        cut.with_suffix(".x")
    )
    monkeypatch.setenv("ACL_SIM_SOC_VERSION", "Ascend310B4")
    acl = aclsim.fresh_acl(monkeypatch, ACL_SIM_SOC_VERSION="Ascend310B4")
    _ready(acl)
    assert acl.mdl.load_from_file(str(tiny_om))[1] == 100013
    assert "socVersion=Ascend310" in acl.get_recent_err_msg()


def test_float_inputs_are_rounded_through_fp16_by_the_graph_or_by_the_runtime(monkeypatch, tiny, tiny_om):
    """The 310 computes in fp16: 1 + 2**-12 reaches the model as 1.0. The simulated atc puts the
    rounding into the graph (two Casts, marked fp16_in_graph); a model without the mark (made by
    an older simulated atc) gets it from the runtime. Logits are then exactly (k + 1) * 1.0."""
    import onnx

    onnx_path, _, d = tiny
    simom = aclsim.atc().simom
    header, graph = simom.loads(tiny_om.read_bytes())
    assert header["inputs"][0]["fp16_in_graph"] is True
    assert [n.op_type for n in onnx.load_from_string(graph).graph.node[:2]] == ["Cast", "Cast"]
    del header["inputs"][0]["fp16_in_graph"]
    old = d / "older.om"
    old.write_bytes(simom.dumps(header, onnx_path.read_bytes()))
    x = np.full((2, 3, 8, 8), 1 + 2**-12, np.float32)
    for om in (tiny_om, old):
        acl = aclsim.fresh_acl(monkeypatch)
        _ready(acl)
        model_id, desc = _load(acl, om)
        code, out = _run(acl, model_id, desc, x)
        assert code == 0 and out.tolist() == [1.0, 2.0, 3.0, 4.0] * 2, (om.name, out)


def test_fp16_input_and_dynamic_batch_gears(monkeypatch, tiny):
    onnx_path, weights, d = tiny
    om = aclsim.build(
        onnx_path, d / "dyn", "--input_shape=input:-1,3,8,8", "--dynamic_batch_size=1,2,4",
        "--input_fp16_nodes=input", "--output_type=FP16",
    )  # fmt: skip
    acl = aclsim.fresh_acl(monkeypatch)
    _ready(acl)
    model_id, desc = _load(acl, om)
    assert (
        acl.mdl.get_num_inputs(desc) == 2
        and acl.mdl.get_input_name_by_index(desc, 1) == "ascend_mbatch_shape_data"
    )
    assert acl.mdl.get_input_dims(desc, 0)[0]["dims"] == [-1, 3, 8, 8]
    assert acl.mdl.get_input_data_type(desc, 0) == 1 and acl.mdl.get_output_data_type(desc, 0) == 1  # FLOAT16
    assert acl.mdl.get_dynamic_batch(desc) == ({"batchCount": 3, "batch": [1, 2, 4]}, 0)
    assert acl.mdl.get_input_size_by_index(desc, 0) == 4 * 3 * 8 * 8 * 2  # the largest gear
    x = np.stack([np.full((3, 8, 8), 0.1 * (i + 1), np.float16) for i in range(2)])
    code, _ = _run(acl, model_id, desc, x)
    assert code == 100000  # no set_dynamic_batch_size
    code, out = _run(acl, model_id, desc, x, batch=2)
    assert code == 0
    got = np.frombuffer(out.tobytes(), np.float16)[:8].reshape(2, 4).astype(np.float32)
    np.testing.assert_allclose(got, x.astype(np.float32).mean(axis=(2, 3)) @ weights, rtol=2e-3)
    assert acl.mdl.get_cur_output_dims(desc, 0)[0]["dims"] == [2, 4]


def _aipp_om(tiny, name, lines):
    onnx_path, _, d = tiny
    cfg = d / f"{name}.cfg"
    cfg.write_text("aipp_op {\n" + "\n".join(f"    {line}" for line in lines) + "\n}\n")
    return aclsim.build(onnx_path, d / name, "--input_shape=input:1,3,8,8", f"--insert_op_conf={cfg}")


def test_static_aipp_rgb_and_yuv420sp(monkeypatch, tiny):
    rgb = _aipp_om(tiny, "rgb", [
        "aipp_mode : static", "input_format : RGB888_U8", "src_image_size_w : 10", "src_image_size_h : 10",
        "crop : true", "load_start_pos_h : 1", "load_start_pos_w : 1", "crop_size_w : 8", "crop_size_h : 8",
        "rbuv_swap_switch : true", "min_chn_0 : 100", "min_chn_1 : 50", "min_chn_2 : 10",
        "var_reci_chn_0 : 0.5", "var_reci_chn_1 : 0.25", "var_reci_chn_2 : 0.125",
    ])  # fmt: skip
    yuv = _aipp_om(tiny, "yuv", ["aipp_mode : static", "input_format : YUV420SP_U8", "src_image_size_w : 8",
                                 "src_image_size_h : 8", "csc_switch : true"])  # fmt: skip
    acl = aclsim.fresh_acl(monkeypatch)
    _ready(acl)
    model_id, desc = _load(acl, rgb)
    assert acl.mdl.get_input_data_type(desc, 0) == 4 and acl.mdl.get_input_dims(desc, 0)[0]["dims"] == [
        1,
        10,
        10,
        3,
    ]
    img = np.zeros((1, 10, 10, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 200, 150, 90  # R, G, B; the swap makes it B, G, R
    code, out = _run(acl, model_id, desc, img)
    assert code == 0
    np.testing.assert_allclose(
        out[:3], [(90 - 100) * 0.5, (150 - 50) * 0.25 * 2, (200 - 10) * 0.125 * 3], rtol=1e-3
    )
    model_id, desc = _load(acl, yuv)
    assert acl.mdl.get_input_size_by_index(desc, 0) == 8 * 8 * 3 // 2
    nv12 = np.concatenate([np.full(64, 120, np.uint8), np.tile(np.array([128, 128], np.uint8), 16)])
    code, out = _run(acl, model_id, desc, nv12)
    assert code == 0
    np.testing.assert_allclose(out[:3], [120, 240, 360], rtol=1e-3)  # grey: R = G = B = Y


def test_atc_takes_the_planners_command_and_refuses_what_atc_would(tiny, tmp_path):
    onnx_path, _, _ = tiny
    atc = aclsim.atc()
    from deploy.models import atc as planner

    plan = planner.plan_conversion(onnx_path, "atlas200dk", aipp={"mean": [0.5] * 3, "std": [0.25] * 3},
                                   aipp_src_size=(8, 8), output=tmp_path / "planned")  # fmt: skip
    planner.write_aipp(plan)
    assert atc.main(plan.argv[1:]) == 0 and plan.output.is_file()
    header, _ = atc.simom.loads(plan.output.read_bytes())
    assert (
        header["inputs"][0]["dtype"] == "UINT8" and header["inputs"][0]["aipp"]["input_format"] == "RGB888_U8"
    )
    assert header["soc_version"] == "Ascend310" and header["atc_argv"] == plan.argv
    base = [f"--model={onnx_path}", "--output=" + str(tmp_path / "x"), "--soc_version=Ascend310"]
    for argv, message in [
        (base + ["--framework=5", "--inputshape=input:1,3,8,8"], "unknown command line flag 'inputshape'"),
        (base + ["--framework=0"], "ONNX only"),
        ([*base[:2], "--soc_version=Ascend999", "--framework=5"], "soc_version"),
        (base + ["--framework=5"], "dynamic dimension"),
        (base + ["--framework=5", "--input_shape=input:1,3,8,8", "--output_type=INT8"], "not simulated"),
    ]:
        with pytest.raises(atc.AtcSimError, match=message):
            atc.convert(argv)


def test_set_env_makes_acl_importable_and_npu_smi_reports_the_chip():
    import os
    import subprocess
    import sys

    from deploy.ops.facts import npu_name

    probe = "import acl; print(acl.SIMULATED, acl.rt.get_run_mode())"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    without = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd="/")
    assert without.returncode != 0 and "No module named 'acl'" in without.stderr
    with_env = subprocess.run(["bash", "-c", f". {aclsim.ASCEND}/set_env.sh && {sys.executable} -c '{probe}'"],
                              capture_output=True, text=True, env=env, cwd="/")  # fmt: skip
    assert with_env.stdout.strip() == "True (0, 0)", with_env.stderr
    smi = subprocess.run([str(aclsim.ASCEND / "bin" / "npu-smi"), "info"], capture_output=True, text=True)
    assert smi.returncode == 0 and npu_name(smi.stdout) == "310"
