"""Test and benchmark support: throwaway projects with their own sandbox board, driven through the CLI.

What tests and benchmarks share, in the spirit of ``fabric.testing``: the demo's location and
expected answers, the inventory a throwaway project starts from, :class:`Project` (a project
directory whose ``deploy`` commands run exactly as a user types them, as subprocesses), and
process checks. The link-shaping TCP relay is :mod:`deploy.testing.relay`.

This package may import anything in ``deploy``; nothing in ``deploy`` imports it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from deploy.models import (
    DEMO_INPUT_SHAPE,
    DEMO_LABELS,
    DEMO_MODEL,
    DEMO_PHOTOS,
    DEMO_PREPROCESS,
    DEMO_STAMP,
    DemoAssets,
)
from deploy.sandbox import pid_running

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "demo"  # where `deploy model demo` builds for the repository's own inventory.yaml

# ImageNet classes a correct top-1 is in, per demo photo (from the demo's own recipe).
EXPECTED: dict[str, set[int]] = {name: set(classes) for name, (_, classes) in DEMO_PHOTOS.items()}
CAT = EXPECTED["chelsea.jpg"]
ESPRESSO = EXPECTED["coffee.jpg"]
ROCKET = EXPECTED["rocket.jpg"]

TEST_PHOTOS = ("chelsea.jpg", "coffee.jpg", "rocket.jpg")  # a project's own images/ by default
TEST_ENV = {"CLASSIFY_MODE": "test", "API_TOKEN": "s3cret-value-never-shown"}  # the token must never be shown
SANDBOX_BOARD: dict[str, Any] = {"sandbox": True, "target": "x86_64-cpu"}


class CommandFailed(AssertionError):
    """A ``deploy`` command that had to succeed did not; the message carries its stdout and stderr."""


def top1(rec: dict) -> int:
    """The top-1 class index of one results.jsonl record."""
    return rec["topk"][0][0]


pid_alive = pid_running  # True while the process runs; a zombie waiting to be reaped has ended


def rounded(obj, places: int = 4):
    """A benchmark's result with every float rounded to ``places`` (dicts and lists walked), for its JSON."""
    if isinstance(obj, float):
        return round(obj, places)
    if isinstance(obj, dict):
        return {k: rounded(v, places) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v, places) for v in obj]
    return obj


def wait_for(predicate, timeout: float = 60.0, what: str = "condition", every: float = 0.05):
    """``predicate()``'s first truthy value, asked every ``every`` seconds; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def wait_gone(pids, timeout: float = 10.0) -> bool:
    """Wait until none of ``pids`` runs; True when they all ended within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(pid_alive(p) for p in pids)


def deploy_environ() -> dict[str, str]:
    """The environment for ``python -m deploy`` subprocesses: this checkout's ``deploy`` first on the path."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def build_demo(root: Path = DEMO) -> Path:
    """The demo's model, labels and photos under ``root``, built by ``deploy model demo`` (cached: when they
    are already there this only checks their hashes and imports no torch). Raises :class:`CommandFailed`."""
    argv = [sys.executable, "-m", "deploy", "-i", str(REPO / "inventory.yaml"), "model", "demo", "--dest", str(root)]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=deploy_environ())
    if r.returncode != 0:
        raise CommandFailed(f"deploy model demo exited {r.returncode}: {r.stderr.strip()}")
    return root


def demo_built(root: Path = DEMO) -> bool:
    """Whether ``root`` has the demo model (without checking hashes: see :func:`build_demo`)."""
    return (root / DEMO_MODEL).is_file()


def demo_assets(root: Path = DEMO) -> DemoAssets:
    """The files of a demo built at ``root`` (every ``images/*.jpg``), with the preprocessing its stamp
    recorded (an older build may have been measured with another), else today's ``DEMO_PREPROCESS``."""
    try:
        stamp = json.loads((root / DEMO_STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stamp = {}
    return DemoAssets(
        root=root,
        model=root / DEMO_MODEL,
        labels=root / DEMO_LABELS,
        images=tuple(sorted((root / "images").glob("*.jpg"))),
        stamp=root / DEMO_STAMP,
        input_shape=DEMO_INPUT_SHAPE,
        preprocess=stamp.get("preprocess") or json.loads(json.dumps(DEMO_PREPROCESS)),
        expected={name: tuple(classes) for name, classes in EXPECTED.items()},
        rebuilt=False,
    )


def demo_inventory(demo: Path, *, app: str = "classify", images: str | Path = "images", topk: int = 5,
                   keep: int = 5, env: dict[str, str] | None = None, boards: dict[str, dict] | None = None,
                   app_extra: dict[str, Any] | None = None) -> str:
    """inventory.yaml text for the demo app: its model and labels from ``demo``, ``images`` (relative to the
    project), the demo's own preprocessing (``deploy.models.DEMO_PREPROCESS``, the one the demo was
    measured with), and ``boards`` (default: sandbox board ``board1`` on this machine); ``app_extra`` adds to
    or replaces app settings (``{"models": {...}, "backend_options": {...}}``)."""
    doc = {
        "app": {
            "name": app,
            "models": {"onnx": str(demo / DEMO_MODEL)},
            "labels": str(demo / DEMO_LABELS),
            "images": str(images),
            "preprocess": dict(DEMO_PREPROCESS),
            "topk": topk,
            "keep_releases": keep,
            "env": dict(TEST_ENV if env is None else env),
        },
        "boards": boards if boards is not None else {"board1": dict(SANDBOX_BOARD)},
    }
    doc["app"].update(app_extra or {})
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)


def ssh_argv(sandbox: dict, port: int | None = None) -> list[str]:
    """A plain, non-interactive OpenSSH client argv (options, then ``user@host`` last) for one row of
    ``deploy sandbox status --json``; ``port`` replaces the board's port (e.g. a relay in front of it)."""
    words = shlex.split(sandbox["ssh_command"])
    if words[0] != "ssh" or "-p" not in words:
        raise ValueError(f"unexpected ssh command: {sandbox['ssh_command']}")
    if port is not None:
        words[words.index("-p") + 1] = str(port)
    return [*words[:-1], "-o", "BatchMode=yes", words[-1]]


class Project:
    """A throwaway project directory with its own inventory and sandbox board, driven through the CLI.

    ``images/`` holds a copy of ``photos`` from the demo (None: all of them). :meth:`configure` rewrites
    the inventory from :func:`demo_inventory` with this project's ``app``, ``env`` and ``boards`` (change
    those attributes, then call it). Commands run as ``python -m deploy -i <inventory> ...`` in ``root``.
    """

    def __init__(self, root: Path, demo: Path = DEMO, *, app: str = "classify", photos=TEST_PHOTOS,
                 env: dict[str, str] | None = None, boards: dict[str, dict] | None = None):
        self.root = Path(root)
        self.demo = Path(demo)
        self.app = app
        self.env = dict(TEST_ENV if env is None else env)
        self.boards = boards if boards is not None else {"board1": dict(SANDBOX_BOARD)}
        self.app_extra: dict[str, Any] = {}
        self.inventory = self.root / "inventory.yaml"
        self.images = self.root / "images"
        self.environ = deploy_environ()
        self.images.mkdir(parents=True, exist_ok=True)
        for src in sorted((self.demo / "images").glob("*.jpg")):
            if photos is None or src.name in photos:
                shutil.copy2(src, self.images / src.name)
        self.configure()

    def configure(self, topk: int = 5, keep: int = 5, *, app: str | None = None, images: Path | None = None) -> None:
        """Rewrite inventory.yaml; ``app`` and ``images`` override this project's for this inventory only."""
        text = demo_inventory(self.demo, app=app or self.app, images=images or "images", topk=topk, keep=keep,
                              env=self.env, boards=self.boards, app_extra=self.app_extra)
        self.inventory.write_text(text)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "deploy", "-i", str(self.inventory), *args]

    def deploy(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """``deploy ARGS`` to completion; with ``check``, a non-zero exit raises :class:`CommandFailed`."""
        r = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout, cwd=self.root,
                           env=self.environ)
        if check and r.returncode != 0:
            raise CommandFailed(f"deploy {' '.join(args)} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    def deploy_json(self, *args: str, check: bool = True, timeout: float = 300):
        return json.loads(self.deploy(*args, "--json", check=check, timeout=timeout).stdout)

    def start(self, *args: str) -> subprocess.Popen:
        """``deploy ARGS`` in the background (text pipes for stdout and stderr); the caller waits for it."""
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=self.root, env=self.environ)

    def up(self, board: str = "board1", timeout: float = 300) -> dict:
        """``deploy sandbox up BOARD``; its status row (name, port, home, pid, ssh_command, ...)."""
        return self.deploy_json("sandbox", "up", board, timeout=timeout)[0]

    def down(self, timeout: float = 10.0) -> bool:
        """``deploy sandbox down --purge`` (stops the sshd processes this project started, by PID, and removes
        the boards' homes); True when none of them is left running after ``timeout`` seconds."""
        if not (self.root / ".deploy").exists():
            return True
        try:
            rows = self.deploy_json("sandbox", "status", check=False)
        except ValueError:  # no JSON: nothing it could report on
            rows = []
        pids = [row["pid"] for row in rows if row.get("pid")]
        self.deploy("sandbox", "down", "--purge", check=False)
        return wait_gone(pids, timeout)

    def status(self, board: str = "board1") -> dict:
        """The sandbox board's row of ``deploy sandbox status --json`` (asked afresh on every call)."""
        return next(row for row in self.deploy_json("sandbox", "status") if row["name"] == board)

    @property
    def sandbox(self) -> dict:
        return self.status()

    @property
    def home(self) -> Path:
        return Path(self.sandbox["home"])

    @property
    def app_dir(self) -> Path:
        return self.home / "HIAI_PROJECTS" / self.app

    def current_release(self, board: str = "board1", app: str | None = None) -> str | None:
        """The release a sandbox board's ``current`` link names, read from its home (not through the tool);
        None when the app has no current release there."""
        home = Path(self.status(board)["home"])
        try:
            return os.readlink(home / "HIAI_PROJECTS" / (app or self.app) / "current").split("/")[-1]
        except FileNotFoundError:
            return None

    def ssh(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        """A plain OpenSSH client command, non-interactive, exactly as a user would type it."""
        r = subprocess.run([*ssh_argv(self.sandbox), command], capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise CommandFailed(f"ssh {command!r} exited {r.returncode}: {r.stderr}")
        return r

    def relay_board(self, port: int, board: str = "board1") -> dict[str, Any]:
        """Inventory settings for reaching sandbox ``board`` through a relay listening on ``port`` (see
        :mod:`deploy.testing.relay`). The same sshd answers there, so its host key is recorded for that port
        too, and both ``ssh`` and the tool verify it as they would the board's own port."""
        sb = self.status(board)
        known = Path(sb["known_hosts"])
        ours = f"[127.0.0.1]:{sb['port']} "
        lines = [ln[len(ours):] for ln in known.read_text().splitlines() if ln.startswith(ours)]
        with open(known, "a") as f:
            f.writelines(f"[127.0.0.1]:{port} {ln}\n" for ln in lines)
        return {"host": "127.0.0.1", "port": port, "user": sb["user"], "key": sb["key"], "target": SANDBOX_BOARD["target"]}
