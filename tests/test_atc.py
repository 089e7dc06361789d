"""The atc command builder against the documented Ascend examples (shared seeds 000-002)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from deploy.models import atc
from deploy.models.atc import AtcNotFound, ModelSpecError, aipp_config, plan_conversion, run_conversion


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Work in tmp_path so the relative paths of the documented commands resolve."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def touch(path: str) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(b"\0")
    return path


def tiny_onnx(path: Path, *, input_name="image", dims=(1, 3, 224, 224)) -> Path:
    """A real one-node ONNX model (Identity) with the given input, built with onnx.helper."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(dims))
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, list(dims))
    graph = helper.make_graph([helper.make_node("Identity", [input_name], ["out"])], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_seed_000_caffe_resnet50_fp16_input(in_tmp):
    # Seed 000 writes "-output_type=FP32" (single dash, a typo in the README); atc's flag is --output_type.
    documented = (
        "atc --model=caffe_model/resnet50.prototxt --weight=caffe_model/resnet50.caffemodel --framework=0 "
        "--output=model/resnet50 --soc_version=Ascend310 --input_format=NCHW --input_fp16_nodes=data "
        "--output_type=FP32 --out_nodes=prob:0"
    )
    touch("caffe_model/resnet50.prototxt")
    touch("caffe_model/resnet50.caffemodel")
    plan = plan_conversion(
        "caffe_model/resnet50.prototxt",
        "atlas200dk",
        output="model/resnet50",
        fp16_inputs=["data"],
        out_nodes=["prob:0"],
        log=None,
    )
    assert plan.argv == shlex.split(documented)  # same order too
    assert plan.output == Path("model/resnet50.om")
    assert plan.aipp_config is None


def test_caffe_weight_found_next_to_prototxt_or_given_as_model(in_tmp):
    touch("m/net.prototxt")
    touch("m/net.caffemodel")
    by_graph = plan_conversion("m/net.prototxt", log=None)
    by_weight = plan_conversion("m/net.caffemodel", log=None)
    assert by_graph.argv == by_weight.argv
    assert "--weight=m/net.caffemodel" in by_graph.argv
    assert plan_conversion("m/net.prototxt", weight="m/net.caffemodel").argv[:3] == [
        "atc",
        "--model=m/net.prototxt",
        "--weight=m/net.caffemodel",
    ]


def test_seed_001_mindspore_air(in_tmp):
    documented = "atc --model=./resnet-90_1875.air --framework=1 --output=./resnet50 --soc_version=Ascend310"
    touch("resnet-90_1875.air")
    plan = plan_conversion(
        "./resnet-90_1875.air", "atlas200dk", output="./resnet50", output_type=None, log=None
    )
    assert plan.argv == shlex.split(documented)


def test_seed_002_onnx_resnet34_shape_read_from_the_model(in_tmp):
    # The seed uses --soc_version=Ascend${chip_name} with chip 310P3, and puts --framework first.
    documented = (
        "atc --framework=5 --model=./resnet34.onnx --output=resnet34_bs1 --input_format=NCHW "
        '--input_shape="image:1,3,224,224" --log=error --soc_version=Ascend310P3'
    )
    tiny_onnx(in_tmp / "resnet34.onnx", input_name="image", dims=("batch", 3, 224, 224))
    plan = plan_conversion("./resnet34.onnx", "atlas300i-duo", output="resnet34_bs1.om", output_type=None)
    expected = shlex.split(documented)
    assert plan.argv[0] == "atc"
    assert sorted(plan.argv) == sorted(expected)
    # given explicitly instead of read from the file: the same command
    explicit = plan_conversion(
        "./resnet34.onnx",
        soc_version="Ascend310P3",
        input_shape="image:1,3,224,224",
        output="resnet34_bs1",
        output_type=None,
    )
    assert explicit.argv == plan.argv


def test_onnx_shape_reading_needs_fixed_dims_other_than_batch(in_tmp):
    tiny_onnx(in_tmp / "m.onnx", input_name="x", dims=(1, 3, "h", "w"))
    with pytest.raises(ModelSpecError, match=r"dynamic dimension 2.*x:n,c,h,w"):
        plan_conversion("m.onnx")
    plan = plan_conversion("m.onnx", input_shape="x:1,3,160,160")
    assert "--input_shape=x:1,3,160,160" in plan.argv


def test_onnx_without_the_onnx_package_requires_the_shape(in_tmp, monkeypatch):
    tiny_onnx(in_tmp / "m.onnx")
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx":
            raise ImportError("no onnx")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ModelSpecError, match="needs the onnx package"):
        plan_conversion("m.onnx")
    assert (
        "--input_shape=image:1,3,224,224" in plan_conversion("m.onnx", input_shape="image:1,3,224,224").argv
    )


def test_documented_onnx_aipp_example(in_tmp):
    # shared notes section 3, third example command
    documented = (
        "atc --model=resnet50.onnx --framework=5 --output=resnet50 --input_format=NCHW "
        '--input_shape="actual_input_1:1,3,224,224" --soc_version=Ascend310 --insert_op_conf=resnet50_aipp.cfg'
    )
    tiny_onnx(in_tmp / "resnet50.onnx", input_name="actual_input_1")
    plan = plan_conversion("resnet50.onnx", "atlas200dk", aipp="imagenet", output_type=None, log=None)
    assert sorted(plan.argv) == sorted(shlex.split(documented))
    assert plan.aipp_path == Path("resnet50_aipp.cfg")


def aipp_fields(text: str) -> dict[str, str]:
    body = text.strip()
    assert body.startswith("aipp_op {") and body.endswith("}")
    fields = {}
    for line in body[len("aipp_op {") : -1].strip().splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def test_imagenet_aipp_matches_the_growthpath_example():
    documented = """aipp_op{ aipp_mode:static  input_format : RGB888_U8
      src_image_size_w : 256  src_image_size_h : 256
      crop: true  load_start_pos_h : 16  load_start_pos_w : 16  crop_size_w : 224  crop_size_h: 224
      min_chn_0 : 123.675  min_chn_1 : 116.28  min_chn_2 : 103.53
      var_reci_chn_0: 0.0171247538316637  var_reci_chn_1: 0.0175070028011204  var_reci_chn_2: 0.0174291938997821 }"""
    tokens = documented.replace("aipp_op{", "").replace("}", "").replace(":", " : ").split()
    expected = {tokens[i]: tokens[i + 2] for i in range(0, len(tokens), 3)}
    fields = aipp_fields(aipp_config("imagenet"))
    assert {k: fields[k] for k in expected} == expected
    # what we add beyond the example are the explicit defaults
    assert set(fields) - set(expected) == {"csc_switch", "rbuv_swap_switch"}
    assert fields["rbuv_swap_switch"] == "false"


def test_imagenet_aipp_values_follow_from_mean_std():
    generic = aipp_fields(aipp_config({"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}))
    preset = aipp_fields(aipp_config("imagenet", src_size=(224, 224)))
    assert generic == preset
    assert generic["crop"] == "false"


def test_caffe_aipp_is_bgr_with_integer_means():
    fields = aipp_fields(aipp_config("caffe"))
    assert fields["input_format"] == "RGB888_U8"
    assert fields["rbuv_swap_switch"] == "true"
    assert [fields[f"mean_chn_{i}"] for i in range(3)] == ["104", "117", "123"]
    assert [fields[f"var_reci_chn_{i}"] for i in range(3)] == ["1.0", "1.0", "1.0"]
    assert fields["src_image_size_w"] == "224" and fields["crop"] == "false"


def test_aipp_crop_follows_the_model_input_size(in_tmp):
    tiny_onnx(in_tmp / "m.onnx", input_name="x", dims=(1, 3, 192, 160))
    plan = plan_conversion("m.onnx", aipp="imagenet", aipp_src_size=(200, 220))
    fields = aipp_fields(plan.aipp_config)
    assert (fields["crop_size_w"], fields["crop_size_h"]) == ("160", "192")
    assert (fields["load_start_pos_w"], fields["load_start_pos_h"]) == ("20", "14")
    with pytest.raises(ModelSpecError, match="smaller than the model input"):
        plan_conversion("m.onnx", aipp="imagenet", aipp_src_size=(100, 100))


def test_aipp_and_fp16_on_the_same_node_is_refused(in_tmp):
    tiny_onnx(in_tmp / "m.onnx", input_name="data")
    with pytest.raises(ModelSpecError, match=r"AIPP and --input_fp16_nodes cannot be combined.*'data'"):
        plan_conversion("m.onnx", aipp="imagenet", fp16_inputs=["data"])
    touch("c.prototxt")
    touch("c.caffemodel")
    with pytest.raises(ModelSpecError, match="cannot be combined"):
        plan_conversion("c.prototxt", aipp="caffe", fp16_inputs="data")


def test_spec_errors(in_tmp):
    touch("model.tflite")
    with pytest.raises(ModelSpecError, match=r"cannot tell the framework of 'model.tflite'"):
        plan_conversion("model.tflite")
    touch("lonely.prototxt")
    with pytest.raises(ModelSpecError, match=r"lonely.caffemodel not found"):
        plan_conversion("lonely.prototxt")
    with pytest.raises(ModelSpecError, match="model file missing.onnx not found"):
        plan_conversion("missing.onnx")
    touch("m.pb")
    with pytest.raises(ModelSpecError, match="no ATC soc_version for target 'jetson'"):
        plan_conversion("m.pb", "jetson")
    with pytest.raises(ModelSpecError, match="needs that node in --out_nodes"):
        plan_conversion("m.pb", output_type="prob:0:FP16")
    ok = plan_conversion("m.pb", output_type="prob:0:FP16", out_nodes="prob:0")
    assert "--output_type=prob:0:FP16" in ok.argv and "--input_format=NHWC" in ok.argv
    with pytest.raises(ModelSpecError, match="bad input shape"):
        plan_conversion("m.pb", input_shape="1,3,224,224")
    with pytest.raises(ModelSpecError, match="unknown AIPP preset"):
        plan_conversion("m.pb", aipp="yolo", input_shape="x:1,224,224,3")


def test_multi_input_shape_uses_atc_syntax(in_tmp):
    touch("m.pb")
    plan = plan_conversion("m.pb", input_shape={"a": (1, 224, 224, 3), "b": (1, 10)})
    assert "--input_shape=a:1,224,224,3;b:1,10" in plan.argv
    assert "'--input_shape=a:1,224,224,3;b:1,10'" in plan.command  # quoted for the shell


def test_run_conversion_without_atc_reports_the_command(in_tmp, monkeypatch):
    monkeypatch.setenv("PATH", str(in_tmp / "empty-bin"))
    tiny_onnx(in_tmp / "m.onnx")
    plan = plan_conversion("m.onnx", aipp="imagenet", output="out/m")
    with pytest.raises(AtcNotFound) as caught:
        run_conversion(plan)
    assert caught.value.exit_code == atc.EXIT_ATC_NOT_FOUND != 0
    assert "CANN toolkit" in str(caught.value)
    assert shlex.split(caught.value.command) == plan.argv
    # the AIPP file the printed command refers to exists, so the command can be run elsewhere
    assert Path("out/m_aipp.cfg").read_text() == plan.aipp_config
    assert not os.path.exists("out/m.om")
