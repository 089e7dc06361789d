"""`deploy check`: board facts against the target profile (pure evaluation, and on a real sandbox board)."""

from __future__ import annotations

from deploy.board import protocol
from deploy.inventory import Board
from deploy.ops.facts import evaluate, npu_name
from deploy.targets import PROFILES

# The documented npu-smi layout (seed 002 shows a 310P3; the Atlas 200I A2 docs show 310B4 rows alike)
NPU_SMI = """\
+-------------------+-----------------+------------------------------------------------------+
| NPU     Name      | Health          | Power(W)     Temp(C)           Hugepages-Usage(page) |
| Chip    Device    | Bus-Id          | AICore(%)    Memory-Usage(MB)                        |
+===================+=================+======================================================+
| 0       310B4     | OK              | 15.8         42                0    / 0              |
| 0       0         | 0000:82:00.0    | 0            1074 / 21534                            |
+===================+=================+======================================================+
"""


def facts(**kw):
    base = {"arch": "aarch64", "python": "3.9.9", "python_exe": "/usr/bin/python3", "home": "/home/HwHiAiUser",
            "free_bytes": 8 << 30, "os": "Ubuntu 22.04", "user": "HwHiAiUser"}
    return protocol.decode(protocol.Facts, {**base, **kw})


def results(findings):
    return {f.check: f.ok for f in findings}


def test_npu_smi_name():
    assert npu_name(NPU_SMI) == "310B4"
    assert npu_name(NPU_SMI.replace("310B4", "310P3")) == "310P3"
    assert npu_name("npu-smi: command failed") is None


def test_atlas200i_a2_all_good():
    board = Board(name="a2", target="atlas200i-a2", host="192.168.0.2")
    got = evaluate(board, PROFILES["atlas200i-a2"],
                   facts(acl={"ok": True, "detail": ["/usr/local/Ascend/pyACL/acl.so"]}, npu_smi={"ok": True, "output": NPU_SMI}))
    assert all(results(got).values()), got


def test_atlas200dk_mismatches_are_each_named():
    board = Board(name="dk", target="atlas200dk", host="192.168.1.2")
    got = evaluate(board, PROFILES["atlas200dk"], facts(
        arch="x86_64", python="3.6.9", free_bytes=100 << 20,
        acl={"ok": False, "detail": ["ModuleNotFoundError: No module named 'acl'"]},
        npu_smi={"ok": True, "output": NPU_SMI},  # a 310B4 answering where a 310 was expected
    ))
    r = results(got)
    assert not r["arch"] and not r["interpreter"] and not r["python version"] and not r["free disk"]
    assert not r["import acl"] and not r["soc version"]
    detail = {f.check: f.detail for f in got}
    assert "No module named 'acl'" in detail["import acl"]
    assert "Ascend310B4" in detail["soc version"] and "Ascend310" in detail["soc version"]
    assert "boards.dk.python" in detail["python version"]


def test_no_npu_smi_is_only_a_warning():
    board = Board(name="dk", target="atlas200dk", host="192.168.1.2")
    got = evaluate(board, PROFILES["atlas200dk"], facts(python="3.7.5", acl={"ok": True, "detail": []}, npu_smi=None))
    smi = next(f for f in got if f.check == "npu-smi")
    assert smi.severity == "warning"
    assert all(f.ok for f in got if f.severity == "error")


def test_check_on_a_sandbox_board(project):
    rows = project.deploy_json("check", "board1")["boards"]
    assert rows[0]["ok"] and rows[0]["facts"]["arch"] == "x86_64"
    assert {f["check"] for f in rows[0]["findings"]} == {"arch", "interpreter", "free disk"}
