"""``deploy model convert --aipp FILE.cfg``: an atc AIPP config of the user's (the documented
``aipp_op { ... }`` format) is checked on the host with file:line errors, handed to atc as
``--insert_op_conf``, and the simulated atc + runtime do what it says (YUV420SP input, the file's
CSC matrix and biases, mean/min/var, crop, swap)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aclsim
import numpy as np
import pytest

from deploy.models import atc
from deploy.models.aipp import read_aipp_file
from deploy.models.atc import ModelSpecError, plan_conversion

GROWTHPATH = """aipp_op{ aipp_mode:static  input_format : RGB888_U8
src_image_size_w : 256  src_image_size_h : 256
crop: true  load_start_pos_h : 16  load_start_pos_w : 16  crop_size_w : 224  crop_size_h: 224
min_chn_0 : 123.675  min_chn_1 : 116.28  min_chn_2 : 103.53
var_reci_chn_0: 0.0171247538316637  var_reci_chn_1: 0.0175070028011204  var_reci_chn_2: 0.0174291938997821 }
"""
YUV = """# JPEG (full range) YUV -> RGB, as the CSC configuration page gives it
aipp_op {
    aipp_mode : static
    input_format : YUV420SP_U8
    src_image_size_w : 16
    src_image_size_h : 16
    csc_switch : true
    rbuv_swap_switch : false
    matrix_r0c0 : 256
    matrix_r0c1 : 0
    matrix_r0c2 : 359
    matrix_r1c0 : 256
    matrix_r1c1 : -88
    matrix_r1c2 : -183
    matrix_r2c0 : 256
    matrix_r2c1 : 454
    matrix_r2c2 : 0
    input_bias_0 : 0
    input_bias_1 : 128
    input_bias_2 : 128
    mean_chn_0 : 10
    min_chn_1 : 20.5
    var_reci_chn_2 : 0.5
}
"""


def _write(tmp_path: Path, text: str, name: str = "aipp.cfg") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_documented_examples_read_whole(tmp_path):
    one_line = read_aipp_file(_write(tmp_path, GROWTHPATH))
    assert one_line.fields["crop_size_h"] == "224" and one_line.fields["var_reci_chn_2"] == "0.0174291938997821"
    assert one_line.lines["min_chn_0"] == 4 and one_line.on("crop") and not one_line.on("csc_switch")
    yuv = read_aipp_file(_write(tmp_path, YUV))
    assert yuv.fields["matrix_r1c2"] == "-183" and yuv.lines["matrix_r1c2"] == 14 and yuv.text == YUV
    two = GROWTHPATH + "aipp_op { aipp_mode : static related_input_rank : 1 input_format : YUV420SP_U8 }\n"
    assert read_aipp_file(_write(tmp_path, two)).fields["input_format"] == "RGB888_U8"  # the first block


@pytest.mark.parametrize("edit, where, message", [
    (("matrix_r0c1 : 0", "matrix_r0c9 : 0"), 10, "unknown AIPP field 'matrix_r0c9'"),
    (("matrix_r0c1 : 0", "matrix_r0c1 : 40000"), 10, "integer in -32768..32767"),
    (("csc_switch : true", "csc_switch : yes"), 7, "takes true or false"),
    (("YUV420SP_U8", "YUV420_U8"), 4, "is not one of"),
    (("min_chn_1 : 20.5", "min_chn_1 : 2x"), 22, "takes a number"),
    (("src_image_size_w : 16", "src_image_size_w : 15"), 5, "must be even for YUV420SP_U8"),
    (("    input_format : YUV420SP_U8\n", ""), 2, "needs input_format"),
    (("mean_chn_0 : 10", "mean_chn_0 : 10\n    mean_chn_0 : 11"), 22, "set twice (first on line 21)"),
    (("\n}\n", "\n"), 2, "is not closed"),
    (("var_reci_chn_2 : 0.5", "var_reci_chn_2 0.5"), 23, "expected 'name : value'"),
    (("src_image_size_h : 16", "src_image_size_h : 16\n    crop : true\n    load_start_pos_h : 10\n"
                               "    crop_size_h : 8"), 9, "leaves the source"),
])  # fmt: skip
def test_a_bad_file_is_one_error_naming_its_line(tmp_path, edit, where, message):
    path = _write(tmp_path, YUV.replace(*edit))
    with pytest.raises(ModelSpecError) as err:
        read_aipp_file(path)
    assert str(err.value).startswith(f"{path}:{where}: ") and message in str(err.value), str(err.value)


def test_planned_conversion_passes_the_file_to_atc_and_checks_its_size(tmp_path):
    onnx_path, _ = aclsim.tiny_onnx(tmp_path / "tiny.onnx")
    cfg = _write(tmp_path, YUV.replace(": 16", ": 8"))
    plan = plan_conversion(onnx_path, "atlas200dk", aipp=cfg, output=tmp_path / "out" / "m")
    assert plan.aipp_config == cfg.read_text() and plan.aipp_path == tmp_path / "out" / "m_aipp.cfg"
    assert f"--insert_op_conf={plan.aipp_path}" in plan.argv
    big = _write(tmp_path, YUV, "big.cfg")  # 16x16 for an 8x8 model input
    with pytest.raises(ModelSpecError, match=rf"^{big}:5: the AIPP output is 16 along w but the model input is 8x8"):
        plan_conversion(onnx_path, "atlas200dk", aipp=big)
    with pytest.raises(ModelSpecError, match="its own source size"):
        plan_conversion(onnx_path, "atlas200dk", aipp=cfg, aipp_src_size=(8, 8))


def _deploy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy", "model", "convert", *args], cwd=aclsim.REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_cli_converts_with_a_config_file_and_refuses_a_bad_one_in_one_line(tmp_path):
    onnx_path, _ = aclsim.tiny_onnx(tmp_path / "tiny.onnx")
    cfg = _write(tmp_path, YUV.replace(": 16", ": 8"))
    ok = _deploy(str(onnx_path), "--target", "atlas200dk", "--simulate", "--aipp", str(cfg), "-o",
                 str(tmp_path / "m"), "--json")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["converted"] is True
    header, _ = aclsim.atc().simom.loads((tmp_path / "m.om").read_bytes())
    spec = header["inputs"][0]
    assert spec["dtype"] == "UINT8" and spec["aipp"]["input_format"] == "YUV420SP_U8"
    assert spec["aipp"]["matrix_r1c1"] == "-88" and spec["aipp"]["mean_chn_0"] == "10"
    bad = _write(tmp_path, YUV.replace("csc_switch : true", "csc_switch : on"), "bad.cfg")
    refused = _deploy(str(onnx_path), "--target", "atlas200dk", "--simulate", "--aipp", str(bad))
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: {bad}:7: csc_switch takes true or false, not 'on'"
    ]
    missing = _deploy(str(onnx_path), "--target", "atlas200dk", "--simulate", "--aipp", "imagenett")
    assert missing.returncode == 2 and "neither a preset (caffe, cifar, imagenet, app) nor an AIPP config file" in (
        missing.stderr
    )


def _channel_means_onnx(path: Path, side: int) -> Path:
    """logits = the mean of each input channel: a model whose output shows what AIPP fed it."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["logits"])],
        "means", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _run_nv12(monkeypatch, om: Path, nv12: np.ndarray) -> np.ndarray:
    acl = aclsim.fresh_acl(monkeypatch)
    assert acl.init() == 0 and acl.rt.set_device(0) == 0 and acl.rt.create_context(0)[1] == 0
    model_id, ret = acl.mdl.load_from_file(str(om))
    desc = acl.mdl.create_desc()
    assert ret == 0 and acl.mdl.get_desc(desc, model_id) == 0
    assert acl.mdl.get_input_size_by_index(desc, 0) == nv12.size
    data = nv12.tobytes()
    inp, _ = acl.rt.malloc(len(data), 0)
    out, _ = acl.rt.malloc(12, 0)
    acl.rt.memcpy(inp, len(data), acl.util.bytes_to_ptr(data), len(data), 1)
    ins, outs = acl.mdl.create_dataset(), acl.mdl.create_dataset()
    acl.mdl.add_dataset_buffer(ins, acl.create_data_buffer(inp, len(data)))
    acl.mdl.add_dataset_buffer(outs, acl.create_data_buffer(out, 12))
    assert acl.mdl.execute(model_id, ins, outs) == 0
    return np.frombuffer(acl.util.ptr_to_bytes(out, 12), np.float32)


def test_the_runtime_does_what_the_file_says(monkeypatch, tmp_path):
    """NV12 16x16 in; the file's matrix (here with B and R rows swapped), biases, crop (even start,
    the size from the model), mean/min/var; and rbuv_swap_switch making it NV21."""
    onnx_path = _channel_means_onnx(tmp_path / "means.onnx", 8)
    y, u, v = 150, 100, 200
    nv12 = np.concatenate([np.full(256, y, np.uint8), np.tile(np.array([u, v], np.uint8), 64)])
    nv12[: 16 * 2] = 0  # rows 0-1 black: the crop from row 2 skips them
    text = (YUV.replace("matrix_r0c1 : 0\n    matrix_r0c2 : 359", "matrix_r0c1 : 454\n    matrix_r0c2 : 0")
            .replace("matrix_r2c1 : 454\n    matrix_r2c2 : 0", "matrix_r2c1 : 0\n    matrix_r2c2 : 359")
            .replace("src_image_size_h : 16", "src_image_size_h : 16\n    crop : true\n    load_start_pos_h : 2"))  # fmt: skip
    om = aclsim.build(onnx_path, tmp_path / "bgr", f"--insert_op_conf={_write(tmp_path, text)}")
    b = (256 * y + 454 * (u - 128)) >> 8
    g = (256 * y - 88 * (u - 128) - 183 * (v - 128)) >> 8
    r = min(255, (256 * y + 359 * (v - 128)) >> 8)
    got = _run_nv12(monkeypatch, om, nv12)
    np.testing.assert_allclose(got, [b - 10, g - 20.5, r * 0.5], rtol=2e-3)
    swapped = aclsim.build(onnx_path, tmp_path / "nv21",
                           f"--insert_op_conf={_write(tmp_path, text.replace('rbuv_swap_switch : false', 'rbuv_swap_switch : true'), 'nv21.cfg')}")  # fmt: skip
    nv21 = nv12.copy()
    nv21[256:] = np.tile(np.array([v, u], np.uint8), 64)
    np.testing.assert_allclose(_run_nv12(monkeypatch, swapped, nv21), got, rtol=1e-6)
    with pytest.raises(atc_sim_error(), match="even source size and even load_start_pos"):
        aclsim.build(onnx_path, tmp_path / "odd", f"--insert_op_conf={_write(tmp_path, text.replace('load_start_pos_h : 2', 'load_start_pos_h : 1'), 'odd.cfg')}")  # fmt: skip


def atc_sim_error():
    return aclsim.atc().AtcSimError


def test_planner_and_simulated_atc_read_the_same_fields(tmp_path):
    """The host's reader and the simulated atc's agree on every field of the documented examples."""
    for text in (GROWTHPATH, YUV):
        path = _write(tmp_path, text)
        assert aclsim.atc().aipp_mod.parse(text) == read_aipp_file(path).fields
    assert atc.read_aipp_file is read_aipp_file
