"""Simulated models on the host: `deploy model convert --simulate`, the push-side checks of an .om
(a simulated model never goes to a real board; a corrupt or truncated one is one line), and the
cached simulated .om a sandbox Atlas board gets from app.models.onnx."""

from __future__ import annotations

import json
import os
import shlex
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import aclsim
import numpy as np
import pytest

from agent.backends.acl import AclBackend
from agent.preprocess import Normalizer, resolve
from deploy.errors import BuildError
from deploy.inventory import App, Board
from deploy.models import atc, simulated
from deploy.release import omfile
from deploy.release import variant as bundle
from deploy.targets import PROFILES

DK = PROFILES["atlas200dk"]
REAL = Board(name="atlas1", target="atlas200dk", host="192.168.1.2")
SANDBOX = Board(name="dk1", target="atlas200dk", sandbox=True)
PREPROCESS = {"preset": "imagenet", "scale": 1.0, "mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0]}
INVENTORY = """\
app:
  name: classify
  models: {{{models}}}
  preprocess: {preprocess}
boards:
  board1: {board}
"""


def deploy(root: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"PATH": path} if path is not None else {})}
    return subprocess.run([sys.executable, "-m", "deploy", "-i", str(root / "inventory.yaml"), *args],
                          capture_output=True, text=True, cwd=root, timeout=120, env=env)  # fmt: skip


def inventory(root: Path, models: str, board: str = "{sandbox: true, target: atlas200dk}", pre=None) -> Path:
    text = INVENTORY.format(models=models, board=board, preprocess=json.dumps(pre or PREPROCESS))
    (root / "inventory.yaml").write_text(text)
    return root


def app(tmp_path: Path, preprocess=None, batch: int = 1, **models: str) -> App:
    return App(name="a", models={k: tmp_path / v for k, v in models.items()}, labels=None, images=None,
               preprocess=dict(preprocess or PREPROCESS), batch=batch)  # fmt: skip


def real_om(path: Path, payload: int = 100, cut: int = 0) -> Path:
    """A file with a real .om's GE header (magic, 256 bytes, length at offset 76) and ``payload`` bytes."""
    head = bytearray(omfile.OM_HEADER_LEN)
    head[:4] = struct.pack("<I", 0x444F4D49)
    head[76:80] = struct.pack("<I", payload)
    data = bytes(head) + b"\x01" * payload
    path.write_bytes(data[: len(data) - cut])
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("simom")
    onnx_path, weights = aclsim.tiny_onnx(d / "tiny.onnx")
    return onnx_path, weights


def test_the_core_knows_the_simulators_magic_and_prefix():
    simom = aclsim.atc().simom
    assert omfile.SIMULATED_OM_MAGIC == simom.MAGIC
    assert omfile._SIMULATED_PREFIX.format == simom._PREFIX.format
    assert struct.pack("<I", 0x444F4D49) == omfile.OM_MAGIC  # GE's MODEL_FILE_MAGIC_NUM as stored on disk


def test_convert_simulate_runs_the_planned_command_and_the_runtime_loads_it(tiny, tmp_path, monkeypatch):
    onnx_path, weights = tiny
    root = inventory(tmp_path, f"onnx: {onnx_path}")
    r = deploy(root, "model", "convert", str(onnx_path), "--target", "atlas200dk", "--aipp", "app",
               "-o", "out/tiny", "--simulate", "--json", path=str(tmp_path / "no-atc"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    om = root / info["output"]
    assert info["simulated"] is True and info["converted"] is True and om.name == "tiny.om"
    header, _ = aclsim.atc().simom.loads(om.read_bytes())
    assert header["atc_argv"] == shlex.split(info["command"])  # exactly what real atc would have been given
    assert header["inputs"][0]["dtype"] == "UINT8" and header["inputs"][0]["aipp"]["crop"] == "false"

    acl = aclsim.fresh_acl(monkeypatch)
    backend = AclBackend(acl_module=acl).load(str(om))
    spec = backend.inputs[0]
    assert (spec.shape, spec.dtype) == ((1, 8, 8, 3), "uint8")
    pixels = np.random.RandomState(0).randint(0, 256, (1, 8, 8, 3)).astype(np.uint8)
    out = backend.run(pixels)[0]
    backend.close()
    expected = ((pixels.astype(np.float32) - 127) / 128).mean(axis=(1, 2)) @ weights
    np.testing.assert_allclose(out, expected, rtol=5e-3, atol=5e-3)

    r = deploy(root, "model", "convert", str(onnx_path), "--target", "atlas200dk", "-o", "out/t2", "--simulate")
    assert r.returncode == 0 and "SIMULATED model" in r.stdout and "only on sandbox boards" in r.stdout


def test_real_atc_on_path_is_used_unless_simulate(tiny, tmp_path):
    onnx_path, _ = tiny
    root = inventory(tmp_path, f"onnx: {onnx_path}")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "atc"
    fake.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        out = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--output=")][0]
        open(out + ".om", "wb").write(b"IMOD real atc")
        print("ATC run success")
        """))  # fmt: skip
    fake.chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    r = deploy(root, "model", "convert", str(onnx_path), "--target", "atlas200dk", "-o", "real", "--json", path=path)
    assert r.returncode == 0 and json.loads(r.stdout)["simulated"] is False, r.stderr
    assert (root / "real.om").read_bytes() == b"IMOD real atc"
    r = deploy(root, "model", "convert", str(onnx_path), "--target", "atlas200dk", "-o", "sim", "--simulate",
               path=path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (root / "sim.om").read_bytes()[:8] == omfile.SIMULATED_OM_MAGIC
    r = deploy(root, "model", "convert", str(onnx_path), "--target", "atlas200dk", "-o", "x", path=str(tmp_path))
    assert r.returncode == 3 and r.stdout.startswith("atc --model=")  # no atc: the command, exit 3 (unchanged)


def test_a_simulated_model_is_refused_for_a_real_board(tiny, tmp_path):
    onnx_path, _ = tiny
    om = aclsim.build(onnx_path, tmp_path / "sim", "--input_shape=input:1,3,8,8")
    a = app(tmp_path, om="sim.om")
    with pytest.raises(BuildError) as info:
        bundle.model_for(a, DK, REAL)
    message = str(info.value)
    assert "\n" not in message and "atlas1" in message and str(om) in message
    assert "a simulated model from `deploy model convert --simulate`" in message
    assert "a real board needs a model from the CANN atc" in message
    assert bundle.model_for(a, DK, SANDBOX) == om  # a sandbox board takes it as it is

    root = inventory(tmp_path, f"om: {om}", board="{host: 127.0.0.1, port: 1}")
    r = deploy(root, "push", "board1")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message.replace("atlas1", "board1") in lines[0], lines


def test_corrupt_and_truncated_models_are_one_line_each(tiny, tmp_path):
    onnx_path, _ = tiny
    good = aclsim.build(onnx_path, tmp_path / "good", "--input_shape=input:1,3,8,8").read_bytes()
    header_len = struct.unpack_from("<I", good, 12)[0]
    cases = {
        "garbage.om": (b"not a model at all", REAL, "is not an Ascend offline model"),
        "empty.om": (b"", REAL, "is not an Ascend offline model"),
        "short-real.om": (real_om(tmp_path / "x", cut=20).read_bytes(), REAL, "is truncated: 336 bytes"),
        "tiny-real.om": (b"IMOD" + b"\0" * 10, REAL, "shorter than the 256-byte .om header"),
        "short-sim.om": (good[:-10], SANDBOX, "is a truncated simulated model"),
        "cut-header.om": (good[: 16 + header_len // 2], SANDBOX, "header is cut off"),
        "bad-header.om": (good[:16] + b"{" * header_len + good[16 + header_len :], SANDBOX, "corrupt"),
        "sim-prefix.om": (good[:10], SANDBOX, "truncated simulated model (10 bytes)"),
        "real-on-sandbox.om": (real_om(tmp_path / "y").read_bytes(), SANDBOX, "cannot load the real .om"),
    }
    for name, (data, board, needle) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BuildError) as info:
            bundle.model_for(app(tmp_path, om=name), DK, board)
        assert needle in str(info.value) and name in str(info.value) and "\n" not in str(info.value), name
    real_om(tmp_path / "ok.om")
    assert bundle.model_for(app(tmp_path, om="ok.om"), DK, REAL).name == "ok.om"


def test_sandbox_dk_gets_the_simulated_om_of_the_onnx_cached(tiny, tmp_path, monkeypatch):
    onnx_path, weights = tiny
    state = tmp_path / ".deploy"
    (tmp_path / "tiny.onnx").write_bytes(onnx_path.read_bytes())
    a = app(tmp_path, onnx="tiny.onnx", om="never-built.om")
    with pytest.raises(bundle.SimulatedModelNeeded) as info:  # a BuildError: one line if nobody builds it
        bundle.model_for(a, DK, SANDBOX, state)
    assert "dk1" in str(info.value) and "--simulate" in str(info.value) and isinstance(info.value, BuildError)
    with pytest.raises(BuildError, match="needs an .om model"):  # real boards are not helped
        bundle.model_for(app(tmp_path, onnx="tiny.onnx"), DK, REAL, state)

    runs = []
    real_run = atc.run_conversion
    monkeypatch.setattr(atc, "run_conversion", lambda *a, **k: runs.append(a[0].argv) or real_run(*a, **k))
    om = simulated.prepare_model(a, DK, SANDBOX, state)
    assert om == state / "models" / "tiny.Ascend310.om" and len(runs) == 1
    assert "--insert_op_conf=" + str(state / "models" / "tiny.Ascend310_aipp.cfg") in runs[0]  # AIPP, as seed 000
    assert bundle.model_for(a, DK, SANDBOX, state) == om  # found by the core, no conversion

    assert simulated.ensure_simulated_om(a, DK, state) == om and len(runs) == 1  # cached
    os.utime(tmp_path / "tiny.onnx", ns=(1, 1))  # touched, same bytes: new stamp, no conversion
    with pytest.raises(bundle.SimulatedModelNeeded):
        bundle.model_for(a, DK, SANDBOX, state)
    assert simulated.prepare_model(a, DK, SANDBOX, state) == om and len(runs) == 1
    b4 = app(tmp_path, batch=4, onnx="tiny.onnx")  # another batch: another model
    assert simulated.prepare_model(b4, DK, SANDBOX, state) == om and len(runs) == 2
    assert "--input_shape=input:4,3,8,8" in runs[1]

    acl = aclsim.fresh_acl(monkeypatch)
    backend = AclBackend(acl_module=acl).load(str(om))
    assert backend.inputs[0].shape == (4, 8, 8, 3) and backend.inputs[0].dtype == "uint8"
    backend.close()


def test_app_aipp_normalises_like_the_cpu_path_and_leaves_order_to_the_agent(tiny, tmp_path, monkeypatch):
    """caffe: BGR, per-channel means. The agent orders the channels itself, so AIPP must not swap them."""
    onnx_path, weights = tiny
    pre = {"preset": "caffe"}
    assert atc.aipp_from_preprocess({"preset": "raw-u8"}) is None
    aipp = atc.aipp_from_preprocess(pre)
    assert aipp["bgr"] is False
    plan = atc.plan_conversion(onnx_path, "atlas200dk", aipp=aipp, output=tmp_path / "caffe")
    om = atc.run_conversion(plan, simulate=True)
    crop = np.random.RandomState(1).randint(0, 256, (8, 8, 3)).astype(np.uint8)  # an RGB crop from the decoder

    cpu = Normalizer(resolve(pre, input_shape=(1, 3, 8, 8), input_dtype="float32"))
    x = cpu.batch_buffer(1)
    cpu.write(crop, x[0])
    expected = x.mean(axis=(2, 3)) @ weights

    acl = aclsim.fresh_acl(monkeypatch)
    backend = AclBackend(acl_module=acl).load(str(om))
    spec = backend.inputs[0]
    dev = Normalizer(resolve(pre, input_shape=spec.shape, input_dtype=spec.dtype, input_layout=spec.layout))
    u8 = dev.batch_buffer(1)
    dev.write(crop, u8[0])
    out = backend.run(u8)[0]
    backend.close()
    np.testing.assert_allclose(out, expected, rtol=5e-3, atol=0.1)
