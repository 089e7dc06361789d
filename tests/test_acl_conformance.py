"""Huawei's own pyACL clients, unmodified from the checkout ASCEND_SAMPLES names, run against
the simulated runtime (as subprocesses, on CPython 3.7 with the DK's cp37 numpy/Pillow/
onnxruntime where the machine has a 3.7) on models built by the simulated atc from the demo
EfficientNet-Lite0, and must name the right ImageNet class for real photos: the sync and async
ResNet-50 samples, acllite's model, and the googlenet picture sample (DVPP JPEG decode and VPC
resize into a YUV420SP-AIPP model)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import aclsim
import numpy as np
import pytest
from PIL import Image

CLS = aclsim.SAMPLES / "python" / "level2_simple_inference" / "1_classification"
ESPRESSO, CATS = 967, set(range(281, 286))
DRIVER = """
import sys
import numpy as np
from PIL import Image
from acllite_resource import AclLiteResource
from acllite_model import AclLiteModel

resource = AclLiteResource()
resource.init()
model = AclLiteModel(sys.argv[1])
for path in sys.argv[3:]:
    img = np.asarray(Image.open(path).convert("RGB").resize((256, 256)), dtype=np.uint8)[None]
    if sys.argv[2] == "dynamic":
        out = model._execute_with_dynamic_batch_size([np.ascontiguousarray(np.concatenate([img, img]))], 2)
    else:
        out = model.execute([img])
    print("top1", path, int(np.argmax(out[0][0])), int(np.argmax(out[0][-1])))
del model
del resource
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    aclsim.require_samples()
    demo = aclsim.require_demo_model()
    python, note = aclsim.python37()
    print(f"conformance interpreter: {python} ({note})")
    d = tmp_path_factory.mktemp("conformance")
    images = d / "images"
    images.mkdir()
    for name in ("coffee.jpg", "chelsea.jpg"):
        shutil.copy(aclsim.REPO / "demo" / "images" / name, images / name)
    return python, demo, d, images


def _caffe_style(demo, path):
    """The demo model behind the input convention of Huawei's Caffe ResNet-50 (what the sync and
    async samples feed): NCHW BGR minus 104/117/123. The prepended nodes undo it into the demo
    model's (RGB - 127) / 128, as the Caffe model's own first layers expect their input."""
    import onnx
    from onnx import TensorProto, compose, helper, numpy_helper

    eff = onnx.load(str(demo))
    inits = [
        numpy_helper.from_array(np.array([2, 1, 0], np.int64), "bgr_to_rgb"),
        numpy_helper.from_array(np.array([123, 117, 104], np.float32).reshape(1, 3, 1, 1), "caffe_mean"),
        numpy_helper.from_array(np.array(127, np.float32), "eff_mean"),
        numpy_helper.from_array(np.array(128, np.float32), "eff_std"),
    ]
    nodes = [
        helper.make_node("Gather", ["data", "bgr_to_rgb"], ["rgb_c"], axis=1),
        helper.make_node("Add", ["rgb_c", "caffe_mean"], ["rgb"]),
        helper.make_node("Sub", ["rgb", "eff_mean"], ["centred"]),
        helper.make_node("Div", ["centred", "eff_std"], ["pre_out"]),
    ]
    shape = ["batch", 3, 224, 224]
    graph = helper.make_graph(nodes, "caffe_input", [helper.make_tensor_value_info("data", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("pre_out", TensorProto.FLOAT, shape)], inits)  # fmt: skip
    pre = helper.make_model(graph, opset_imports=eff.opset_import, ir_version=eff.ir_version)
    onnx.save(compose.merge_models(pre, eff, io_map=[("pre_out", "input")]), str(path))
    return path


@pytest.fixture(scope="module")
def resnet_like_om(setup):
    _, demo, d, _ = setup
    onnx_path = _caffe_style(demo, d / "caffe_style.onnx")
    # seed 000's flags: --input_fp16_nodes=data --output_type=FP32 (its --out_nodes names a Caffe layer)
    return aclsim.build(onnx_path, d / "resnet50", "--input_format=NCHW", "--input_shape=data:1,3,224,224",
                        "--input_fp16_nodes=data", "--output_type=FP32", "--log=error")  # fmt: skip


def _top1s(stdout):
    """The first index of each 'top5 inference results' block."""
    return [int(m) for m in re.findall(r"top5 inference results: =+\s*\n\[(\d+)\]", stdout)]


def test_sync_acl_net_classifies_real_photos(setup, resnet_like_om):
    python, _, _, images = setup
    src = CLS / "resnet50_imagenet_classification" / "src"
    proc = aclsim.run_sample(python, src / "acl_net.py", ["--model_path", str(resnet_like_om),
                                                          "--images_path", str(images)], cwd=src)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    order = re.findall(r"images:\S*/(\w+)\.jpg", proc.stdout)
    top = dict(zip(order, _top1s(proc.stdout), strict=True))
    assert top["coffee"] == ESPRESSO and top["chelsea"] in CATS, proc.stdout
    assert "Resources released successfully." in proc.stdout


def test_async_acl_net_with_callbacks_and_memory_pool(setup, resnet_like_om):
    python, _, _, images = setup
    src = CLS / "resnet50_async_imagenet_classification" / "src"
    args = ["--model_path", str(resnet_like_om), "--images_path", str(images),
            "--execute_times", "6", "--callback_interval", "2", "--mem_pools", "4"]  # fmt: skip
    proc = aclsim.run_sample(python, src / "acl_net.py", args, cwd=src)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    tops = _top1s(proc.stdout)
    assert len(tops) == 6 and proc.stdout.count("callback func stage success") == 3
    assert set(tops) <= {ESPRESSO} | CATS and ESPRESSO in tops and set(tops) & CATS
    assert "release source stage success" in proc.stdout


def test_acllite_model_with_aipp_fixed_and_dynamic_batch(setup, tmp_path):
    python, demo, d, images = setup
    from deploy.models import atc as planner

    plan = planner.plan_conversion(demo, "atlas200dk", aipp={"mean": [127 / 255] * 3, "std": [128 / 255] * 3},
                                   aipp_src_size=(256, 256), output=d / "eff_aipp")  # fmt: skip
    planner.write_aipp(plan)
    fixed = aclsim.atc().convert(plan.argv[1:])
    dynamic = aclsim.build(demo, d / "eff_dyn", "--input_shape=input:-1,3,224,224", "--dynamic_batch_size=1,2",
                           f"--insert_op_conf={plan.aipp_path}")  # fmt: skip
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    acllite = aclsim.SAMPLES / "python" / "common" / "acllite"
    photos = [str(images / "coffee.jpg"), str(images / "chelsea.jpg")]
    for model, mode in ((fixed, "fixed"), (dynamic, "dynamic")):
        proc = aclsim.run_sample(
            python, driver, [str(model), mode, *photos], cwd=tmp_path, extra_path=[acllite]
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        rows = re.findall(r"top1 \S*/(\w+)\.jpg (\d+) (\d+)", proc.stdout)
        got = {name: (int(a), int(b)) for name, a, b in rows}
        assert got["coffee"] == (ESPRESSO, ESPRESSO) and set(got["chelsea"]) <= CATS, proc.stdout
        assert "Release acl resource success" in proc.stdout


# The googlenet sample's model takes YUV420SP 224x224 from DVPP; the demo model wants RGB (x - 127) / 128:
# the JPEG YUV -> RGB matrix (the documented CSC configuration), then mean 127 and 1/128.
YUV_AIPP = """# NV12 from VPC resize in, RGB (pixel - 127) / 128 out
aipp_op { aipp_mode : static  input_format : YUV420SP_U8  src_image_size_w : 224  src_image_size_h : 224
  csc_switch : true  rbuv_swap_switch : false
  matrix_r0c0 : 256  matrix_r0c1 : 0  matrix_r0c2 : 359
  matrix_r1c0 : 256  matrix_r1c1 : -88  matrix_r1c2 : -183
  matrix_r2c0 : 256  matrix_r2c1 : 454  matrix_r2c2 : 0
  input_bias_0 : 0  input_bias_1 : 128  input_bias_2 : 128
  mean_chn_0 : 127  mean_chn_1 : 127  mean_chn_2 : 127
  var_reci_chn_0 : 0.0078125  var_reci_chn_1 : 0.0078125  var_reci_chn_2 : 0.0078125 }
"""
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")  # classify.py draws the label with it


def test_googlenet_picture_sample_decodes_and_resizes_on_dvpp(setup, tmp_path):
    """classify.py unmodified: AclLiteImage -> copy_to_dvpp -> jpegd -> vpc resize -> AclLiteModel on
    the NV12 buffer, with a model converted by `deploy model convert --aipp FILE.cfg --simulate`."""
    python, demo, _, images = setup
    if not FONT.is_file():
        pytest.skip(f"classify.py draws its label with {FONT}: install fonts-dejavu-core")
    checkout = aclsim.SAMPLES / "python"
    sample = tmp_path / "python" / "level2_simple_inference" / "1_classification" / "googlenet_imagenet_picture"
    shutil.copytree(checkout / "common" / "acllite", tmp_path / "python" / "common" / "acllite")
    shutil.copytree(CLS / "googlenet_imagenet_picture" / "src", sample / "src")
    shutil.copytree(images, sample / "data")
    cfg = tmp_path / "googlenet_yuv.cfg"
    cfg.write_text(YUV_AIPP)
    convert = subprocess.run([sys.executable, "-m", "deploy", "model", "convert", str(demo), "--target", "atlas200dk",
                              "--simulate", "--aipp", str(cfg), "-o", str(sample / "model" / "googlenet_yuv")],
                             cwd=aclsim.REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert convert.returncode == 0, convert.stdout + convert.stderr
    proc = aclsim.run_sample(python, sample / "src" / "classify.py", ["../data/"], cwd=sample / "src", timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    top = {name: int(label) for name, label in
           re.findall(r"images:\S*/(\w+)\.jpg\s*\n=+ top5 inference results: =+\s*\nlabel:(\d+)", proc.stdout)}
    assert top.get("coffee") == ESPRESSO and top.get("chelsea") in CATS, proc.stdout[-3000:]
    assert sorted(p.name for p in (sample / "out").iterdir()) == ["chelsea.jpg", "coffee.jpg"]
    assert Image.open(sample / "out" / "coffee.jpg").size == Image.open(images / "coffee.jpg").size
