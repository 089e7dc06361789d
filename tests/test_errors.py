"""Every command, every way a user can get it wrong: one line on stderr, the documented exit code, no traceback.

Each case runs the real CLI (``python -m deploy``) in a fresh project: a broken inventory, a
board that is down, a model file that does not exist, a sandbox board that was never started,
an unusable aarch64 rootfs cache.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

BOARD_COMMANDS = [
    ["check", "board1"],
    ["push", "board1"],
    ["releases", "board1"],
    ["rollback", "board1"],
    ["run", "board1"],
    ["stop", "board1", "--run", "r1"],
    ["pull", "board1"],
    ["status", "board1"],
    ["exec", "board1", "--", "true"],
]
ALL_COMMANDS = BOARD_COMMANDS + [["sandbox", "up"], ["sandbox", "status"], ["sandbox", "down"],
                                 ["model", "convert", "m.onnx", "--aipp", "app"]]

GOOD = """\
app:
  name: classify
  models: {{onnx: {model}}}
  images: images
boards:
  board1: {board}
"""


def deploy(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy", "-i", str(root / "inventory.yaml"), *args],
                          capture_output=True, text=True, cwd=root, timeout=120, env={**os.environ, **(env or {})})


def assert_one_line(r: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == code, (r.returncode, r.stderr)
    assert lines and all(n in r.stderr for n in needles), r.stderr
    assert len([ln for ln in lines if ln.startswith("error")]) == 1, r.stderr


def project(tmp_path: Path, board: str, model: str = "m.onnx") -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "m.onnx").write_bytes(b"not really a model, but a file")
    (tmp_path / "inventory.yaml").write_text(GOOD.format(model=model, board=board))
    return tmp_path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


@pytest.mark.parametrize("args", ALL_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_a_broken_inventory_names_file_line_and_field(tmp_path, args):
    root = project(tmp_path, "{host: 127.0.0.1, port: abc}")
    assert_one_line(deploy(root, *args), 2, "inventory.yaml:6", "boards.board1.port")


@pytest.mark.parametrize("args", BOARD_COMMANDS, ids=lambda a: a[0])
def test_a_dead_board_is_unreachable(tmp_path, args):
    root = project(tmp_path, f"{{host: 127.0.0.1, port: {closed_port()}, target: x86_64-cpu}}")
    r = deploy(root, *args)
    assert_one_line(r, 4, "board1: cannot reach 127.0.0.1")


@pytest.mark.parametrize("args", BOARD_COMMANDS, ids=lambda a: a[0])
def test_a_sandbox_board_that_is_not_up(tmp_path, args):
    root = project(tmp_path, "{sandbox: true, target: x86_64-cpu}")
    assert_one_line(deploy(root, *args), 4, "sandbox board board1 is not running (unreachable): deploy sandbox up board1")


def test_a_missing_model_is_named(tmp_path):
    root = project(tmp_path, "{sandbox: true, target: x86_64-cpu}", model="missing/nowhere.onnx")
    r = deploy(root, "push", "board1")
    assert_one_line(r, 1, "model for board board1 not found", "nowhere.onnx")
    assert_one_line(deploy(root, "model", "convert", str(root / "missing.onnx"), "--target", "atlas200dk"), 2,
                    "missing.onnx")


def test_no_sandbox_board_in_the_inventory(tmp_path):
    root = project(tmp_path, "{host: 127.0.0.1}")
    assert_one_line(deploy(root, "sandbox", "up"), 1, "no board has sandbox: true")
    assert_one_line(deploy(root, "sandbox", "up", "board1"), 1, "board1 is not a sandbox board")


@pytest.mark.skipif(os.geteuid() != 0, reason="emulated aarch64 boards need root")
def test_an_unusable_rootfs_cache(tmp_path):
    root = project(tmp_path, "{sandbox: true, arch: aarch64, target: aarch64-cpu}")
    (tmp_path / "cache-is-a-file").write_text("")
    r = deploy(root, "sandbox", "up", env={"DEPLOY_ROOTFS_CACHE": str(tmp_path / "cache-is-a-file" / "rootfs")})
    assert_one_line(r, 1, "board1:", "cache-is-a-file")


def test_usage_errors_are_argparse_lines(tmp_path):
    root = project(tmp_path, "{sandbox: true}")
    r = deploy(root, "push")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "target" in r.stderr
    r = deploy(root, "exec", "board1")
    assert_one_line(r, 1, "nothing to run")
