"""inventory.yaml: typed loading, and one line naming file, line and field for each mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deploy.errors import InventoryError
from deploy.inventory import load, parse

REPO = Path(__file__).resolve().parents[1]

GOOD = """\
app:
  name: classify
  models:
    onnx: models/net.onnx
  labels: labels.txt
  preprocess: caffe
boards:
  board1:
    sandbox: true
  atlas1:
    host: 192.168.1.2
    user: HwHiAiUser
    target: atlas200dk
  atlas2:
    host: 192.168.1.3
groups:
  lab: [board1, atlas1]
"""


def test_shipped_inventory_loads():
    inv = load(REPO / "inventory.yaml")
    b = inv.boards["board1"]
    assert b.sandbox and b.target == "x86_64-cpu"
    assert inv.app.name == "classify" and "onnx" in inv.app.models
    text = (REPO / "inventory.yaml").read_text()
    assert "#   host: 192.168.1.2" in text and "#   user: HwHiAiUser" in text  # the commented real board


def test_good_inventory(tmp_path):
    inv = parse(GOOD, tmp_path / "inventory.yaml")
    assert inv.app.preprocess == {"preset": "caffe"}
    assert inv.app.models["onnx"] == tmp_path / "models/net.onnx"
    assert inv.boards["atlas1"].target == "atlas200dk" and inv.boards["atlas1"].port == 22
    assert inv.boards["atlas2"].target == "atlas200dk"  # a real board defaults to the Atlas 200 DK
    assert [b.name for b in inv.select("lab")] == ["board1", "atlas1"]
    assert [b.name for b in inv.select("all")] == ["board1", "atlas1", "atlas2"]
    assert [b.name for b in inv.select("atlas2,lab")] == ["atlas2", "board1", "atlas1"]
    with pytest.raises(InventoryError, match="no board or group named 'nope'"):
        inv.select("nope")


@pytest.mark.parametrize(
    "edit, line, field, words",
    [
        (("    user: HwHiAiUser\n", "    user: HwHiAiUser\n    port: abc\n"), 13, "boards.atlas1.port", "integer"),
        (("    target: atlas200dk\n", "    taget: atlas200dk\n"), 13, "boards.atlas1.taget", "unknown field"),
        (("    target: atlas200dk\n", "    target: atlas300\n"), 13, "boards.atlas1.target", "unknown target"),
        (("  atlas2:\n    host: 192.168.1.3\n", "  atlas2:\n    user: x\n"), 14, "boards.atlas2.host", "required"),
        (("  name: classify\n", "  name: ../evil\n"), 2, "app.name", "letters"),
        (("  preprocess: caffe\n", "  preprocess: {preset: weird}\n"), 6, "app.preprocess.preset", "must be one of"),
        (("  lab: [board1, atlas1]\n", "  lab: [board1, atlas9]\n"), 17, "groups.lab", "unknown board 'atlas9'"),
        (("    onnx: models/net.onnx\n", "    tflite: models/net.tflite\n"), 4, "app.models.tflite", "model kind"),
        (("  board1:\n    sandbox: true\n", "  board1:\n    sandbox: yes please\n"), 9, "boards.board1.sandbox", "true or false"),
        (("  preprocess: caffe\n", "  preprocess: caffe\n  backend_options:\n    decode: gpu\n"), 8,
         "app.backend_options.decode", "must be one of cpu, dvpp, not 'gpu'"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path, edit, line, field, words):
    text = GOOD.replace(*edit)
    assert text != GOOD
    path = tmp_path / "inventory.yaml"
    with pytest.raises(InventoryError) as info:
        parse(text, path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line}: {field}: "), msg
    assert words in msg and "\n" not in msg


def test_yaml_syntax_and_duplicates(tmp_path):
    path = tmp_path / "inventory.yaml"
    with pytest.raises(InventoryError, match=r"inventory.yaml:(8|9|10): YAML syntax error: "):
        parse(GOOD.replace("    sandbox: true\n", "    sandbox: [true\n"), path)
    with pytest.raises(InventoryError, match=r":14: boards.atlas1: duplicate key"):
        parse(GOOD.replace("  atlas2:", "  atlas1:"), path)
    with pytest.raises(InventoryError, match=r":1: boards: required section is missing"):
        parse("app:\n  name: x\n  models: {onnx: a.onnx}\n", path)


def test_an_empty_field_is_named_not_a_yaml_traceback(tmp_path):
    path = tmp_path / "inventory.yaml"
    with pytest.raises(InventoryError, match=r"inventory.yaml:12: boards.atlas1.user: "):
        parse(GOOD.replace("user: HwHiAiUser", "user:"), path)
    with pytest.raises(InventoryError, match=r"inventory.yaml:2: app.name: "):
        parse(GOOD.replace("name: classify", "name:"), path)


def test_cli_prints_one_line_without_traceback(tmp_path):
    path = tmp_path / "inventory.yaml"
    path.write_text(GOOD.replace("    user: HwHiAiUser\n", "    user: HwHiAiUser\n    port: 70000\n"))
    r = subprocess.run([sys.executable, "-m", "deploy", "-i", str(path), "status", "atlas1"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"{path}:13: boards.atlas1.port" in lines[0].replace("\n", "")
    r = subprocess.run([sys.executable, "-m", "deploy", "-i", str(tmp_path / "missing.yaml"), "push", "x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "inventory not found" in r.stderr and "Traceback" not in r.stderr


GROUPS = """\
app:
  name: classify
  models: {onnx: net.onnx, om: net.om}
defaults:
  user: HwHiAiUser
boards:
  dk1: {host: 192.168.1.2}
  dk2: {host: 192.168.1.3, target: aarch64-cpu}
  a2: {host: 192.168.0.2}
groups:
  dks:
    boards: [dk1, dk2]
    target: atlas200dk
    python: /usr/local/python3.7.5/bin/python3.7
  a2s:
    boards: [a2]
    target: atlas200i-a2
  lab: [dk1, a2]
"""


def test_group_settings_between_defaults_and_board(tmp_path):
    inv = parse(GROUPS, tmp_path / "inventory.yaml")
    dk1, dk2, a2 = inv.boards["dk1"], inv.boards["dk2"], inv.boards["a2"]
    assert (dk1.target, dk1.python, dk1.user) == ("atlas200dk", "/usr/local/python3.7.5/bin/python3.7", "HwHiAiUser")
    assert dk2.target == "aarch64-cpu"  # the board's own setting wins over its group's
    assert a2.target == "atlas200i-a2" and a2.python is None  # None: the target's interpreter candidates
    assert inv.groups == {"dks": ("dk1", "dk2"), "a2s": ("a2",), "lab": ("dk1", "a2")}


def test_group_errors_name_the_group(tmp_path):
    path = tmp_path / "inventory.yaml"
    clash = GROUPS.replace("  lab: [dk1, a2]\n", "  other:\n    boards: [dk1]\n    target: aarch64-cpu\n")
    with pytest.raises(InventoryError, match=r":20: groups.other.target: board dk1 also gets target from groups.dks"):
        parse(clash, path)
    typo = GROUPS.replace("    target: atlas200i-a2\n", "    target: atlas200i\n")
    with pytest.raises(InventoryError, match=r":17: groups.a2s.target: unknown target 'atlas200i'"):
        parse(typo, path)
    nomembers = GROUPS.replace("    boards: [a2]\n", "")
    with pytest.raises(InventoryError, match=r"groups.a2s.boards: required"):
        parse(nomembers, path)
