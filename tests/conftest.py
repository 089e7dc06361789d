"""Shared fixtures: the demo assets and throwaway projects with their own sandbox boards.

Integration tests drive the same ``deploy`` commands a user types, against real OpenSSH
sshd processes they start themselves, and tear down exactly those (``sandbox down --purge``
stops the recorded PIDs and removes the boards' homes and users).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"

CAT = set(range(281, 286))
ESPRESSO = {967}
ROCKET = {657, 744, 812}  # missile, projectile, space shuttle


@pytest.fixture(scope="session")
def demo() -> Path:
    """The demo model, labels and photos (built once and cached by `deploy model demo`)."""
    if not (DEMO / "models" / "efficientnet_lite0.onnx").exists():
        pytest.importorskip("torch")
    r = subprocess.run([sys.executable, "-m", "deploy", "-i", str(REPO / "inventory.yaml"), "model", "demo"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return DEMO


INVENTORY = """\
app:
  name: {app}
  models:
    onnx: {demo}/models/efficientnet_lite0.onnx
  labels: {demo}/labels/imagenet_classes.txt
  images: images
  preprocess:
    preset: imagenet
    scale: 1.0
    mean: [127.0, 127.0, 127.0]
    std: [128.0, 128.0, 128.0]
  topk: {topk}
  keep_releases: {keep}
  env:
    CLASSIFY_MODE: test
    API_TOKEN: s3cret-value-never-shown

boards:
  board1:
    sandbox: true
    target: x86_64-cpu
"""


class Project:
    """A project directory with its own inventory and sandbox board, driven through the CLI."""

    def __init__(self, root: Path, demo: Path, app: str = "classify"):
        self.root = root
        self.demo = demo
        self.app = app
        self.inventory = root / "inventory.yaml"
        (root / "images").mkdir(parents=True, exist_ok=True)
        for name in ("chelsea.jpg", "coffee.jpg", "rocket.jpg"):
            shutil.copy2(demo / "images" / name, root / "images" / name)
        self.configure()

    def configure(self, topk: int = 5, keep: int = 5) -> None:
        self.inventory.write_text(INVENTORY.format(app=self.app, demo=self.demo, topk=topk, keep=keep))

    def deploy(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "deploy", "-i", str(self.inventory), *args],
                           capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if check and r.returncode != 0:
            raise AssertionError(f"deploy {' '.join(args)} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    def deploy_json(self, *args: str, check: bool = True, timeout: float = 300):
        return json.loads(self.deploy(*args, "--json", check=check, timeout=timeout).stdout)

    @property
    def sandbox(self) -> dict:
        return self.deploy_json("sandbox", "status")[0]

    @property
    def home(self) -> Path:
        return Path(self.sandbox["home"])

    @property
    def app_dir(self) -> Path:
        return self.home / "HIAI_PROJECTS" / self.app

    def ssh(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        """A plain OpenSSH client command, non-interactive, exactly as a user would type it."""
        argv = shlex.split(self.sandbox["ssh_command"]) + ["-o", "BatchMode=yes", command]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"ssh {command!r} exited {r.returncode}: {r.stderr}")
        return r


@pytest.fixture(scope="module")
def project(tmp_path_factory, demo):
    """A fresh project with sandbox board1 up; stopped and purged afterwards."""
    root = tmp_path_factory.mktemp("project")
    proj = Project(root, demo)
    proj.deploy("sandbox", "up")
    pid = proj.sandbox["pid"]
    yield proj
    proj.deploy("sandbox", "down", "--purge", check=False)
    assert not pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """True while the process runs; a zombie waiting for init to reap it has ended."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def top1(rec: dict) -> int:
    return rec["topk"][0][0]
