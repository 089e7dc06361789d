"""Issue 22: a board whose disk fills up (items 2, 3, 4, 5), on a real sandbox board whose home is a 300 MB
loop-mounted ext4 (root only: ``mount -o loop``), filled to the byte with a file the test owns.

Every case ends the same way: once the space is freed, every command works again without a hand on the board.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from deploy.testing import Project

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="a loop-mounted board home needs root (mount -o loop)"),
    pytest.mark.skipif(not (shutil.which("mkfs.ext4") and shutil.which("losetup")), reason="needs mkfs.ext4, losetup"),
]

SIZE = "300M"
KiB, MiB = 1 << 10, 1 << 20


class SmallBoard:
    """board1 with its home on a loop-mounted ext4 of its own; ``fill(leave)`` leaves ``leave`` bytes free."""

    def __init__(self, proj: Project, root: Path):
        self.proj = proj
        self.home = proj.home
        self.image = root / "home.img"
        self.filler = self.home / ".filler"
        subprocess.run(["truncate", "-s", SIZE, str(self.image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-m", "0", "-F", str(self.image)], check=True)
        saved = root / "home-saved"
        subprocess.run(["cp", "-a", str(self.home), str(saved)], check=True)
        st = self.home.stat()
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.home)], check=True)
        self.mounted = True
        subprocess.run(["cp", "-a", f"{saved}/.", str(self.home)], check=True)
        os.chown(self.home, st.st_uid, st.st_gid)
        os.chmod(self.home, 0o755)
        shutil.rmtree(self.home / "lost+found", ignore_errors=True)
        shutil.rmtree(saved)

    def free_bytes(self) -> int:
        st = os.statvfs(self.home)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int) -> None:
        """Leave about ``leave`` bytes free for the board user (a root-owned file takes the rest)."""
        self.unfill()
        os.sync()
        size = self.free_bytes() - leave
        if size > 0:
            subprocess.run(["fallocate", "-l", str(size), str(self.filler)], check=True)

    def fill_now(self) -> None:
        """Take what is free right now, while the board writes (``unfill`` gives it back)."""
        for i in range(20):
            n = self.free_bytes() - 64 * KiB
            if n <= 0:
                return
            subprocess.run(["fallocate", "-l", str(n), f"{self.filler}-{i}"], capture_output=True)

    def unfill(self) -> None:
        for p in self.home.glob(".filler*"):
            p.unlink()

    def close(self) -> None:
        self.unfill()
        if self.mounted:
            for _ in range(50):
                if subprocess.run(["umount", str(self.home)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.2)
            else:
                subprocess.run(["umount", "-l", str(self.home)], check=False)
            self.mounted = False
        self.image.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def small(tmp_path_factory, demo):
    root = tmp_path_factory.mktemp("small")
    proj = Project(root / "project", demo)
    proj.up()
    board = SmallBoard(proj, root)
    try:
        proj.deploy("push", "board1")
        yield board
    finally:
        board.close()
        assert proj.down()


def bytecode_dirs(path: Path) -> list[Path]:
    return [Path(d) / "__pycache__" for d, names, _ in os.walk(path) if "__pycache__" in names]


# ---------------------------------------------------------------- 2: no torn .pyc


def test_bytecode_written_on_a_nearly_full_disk_never_poisons_later_commands(small):
    """CPython's own writer leaves a truncated .pyc when a write comes up short: the board code's cache and a
    release's agent/__pycache__ must never get one, whatever the free space was when they were written."""
    proj = small.proj
    code_cache = small.home / ".cache" / "atlas-deploy" / "board"
    release = proj.app_dir / "releases" / proj.current_release()
    for leave in range(64 * KiB, 384 * KiB, 32 * KiB):
        shutil.rmtree(code_cache, ignore_errors=True)  # the board code is installed (and compiled) again
        for d in bytecode_dirs(release / "agent"):
            shutil.rmtree(d)
        small.fill(leave)
        try:
            proj.deploy("status", "board1", check=False)
            proj.deploy("run", "board1", "--quiet", check=False)
        finally:
            small.unfill()
        for args in (("status", "board1"), ("run", "board1", "--quiet")):
            r = proj.deploy(*args, check=False)
            assert r.returncode == 0, f"{leave // KiB} KiB free: deploy {' '.join(args)}: {r.stdout}{r.stderr}"


# ---------------------------------------------------------------- 3: a push that does not fit


def staging_dirs(proj: Project) -> list[str]:
    return [p.name for p in (proj.app_dir / "releases").iterdir() if p.name.startswith(".staging-")]


def test_a_push_that_cannot_fit_is_refused_before_sending_and_one_that_meets_a_full_disk_says_so(small):
    proj = small.proj
    before = proj.current_release()
    noise = proj.images / "noise.bin"
    noise.write_bytes(os.urandom(60 * MiB))  # incompressible: 60 MB to send and to unpack
    try:
        small.fill(40 * MiB)
        r = proj.deploy("push", "board1", "--json", check=False)
        row = json.loads(r.stdout)["boards"][0]
        assert r.returncode == 1 and re.fullmatch(
            r"board1: needs 6\d MB on ~/HIAI_PROJECTS/classify, 4\d MB free; nothing was sent, the previous release "
            r"is still current", row["error"]), row["error"]
        assert r.stderr.count("\n") == 1 and proj.current_release() == before and not staging_dirs(proj)

        small.fill(90 * MiB)  # room enough by the plan, then the disk fills while the objects arrive
        push = proj.start("push", "board1")
        deadline = time.monotonic() + 30
        while not staging_dirs(proj) and push.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        small.fill_now()
        out, err = push.communicate(timeout=120)
        assert push.returncode == 1 and "No space left on device on the board" in err, err
        assert "Socket is closed" not in err and len(err.strip().splitlines()) == 1
        assert proj.current_release() == before and not staging_dirs(proj)  # its 40 MB are not left behind
    finally:
        small.unfill()
        noise.unlink()
    proj.deploy("push", "board1")
    assert proj.deploy_json("run", "board1")["boards"][0]["images_ok"] == 3


# ---------------------------------------------------------------- 4 and 5: a full disk during a run


def run_ids(proj: Project) -> list[str]:
    return sorted(p.name for p in (proj.app_dir / "runs").iterdir()) if (proj.app_dir / "runs").is_dir() else []


def test_an_upload_that_meets_a_full_disk_leaves_no_run(small, many):
    proj = small.proj
    before = run_ids(proj)
    small.fill(5 * MiB)  # the 40 MB of images do not fit
    try:
        r = proj.deploy("run", "board1", "--images", str(many), check=False)
    finally:
        small.unfill()
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "No space left on device on the board while the images arrived" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert run_ids(proj) == before  # no run, no half-written inputs/, no .new- directory
    pulled = proj.deploy("pull", "board1", check=False)  # the latest run that started, not an empty one
    assert (pulled.returncode == 0) == bool(before), pulled.stderr


def test_a_full_disk_during_a_run_ends_it_with_a_reason_and_it_resumes(small, many):
    proj = small.proj
    images = proj.images
    proj.images = many  # 600 photos in the release: nothing to upload, the run's own files fill the disk
    proj.configure(images=many)
    try:
        proj.deploy("push", "board1")
        small.fill(3 * MiB)
        try:
            r = proj.deploy("run", "board1", "--run-id", "diskfull", "--quiet", check=False)
            row = proj.deploy_json("status", "board1")["boards"][0]
        finally:
            small.unfill()
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        assert "disk full on the board" in r.stdout and "--resume diskfull" in r.stdout, r.stdout
        run = next(x for x in row["runs"] if x["id"] == "diskfull")
        assert run["status"] == "failed" and run["summary"]["reason"].startswith("disk full on the board")
        assert 0 < run["summary"]["ok"] < 600
        done = proj.deploy_json("run", "board1", "--resume", "diskfull")["boards"][0]
        assert done["ok"] and done["summary"]["ok"] == 600
        for args in (("status", "board1"), ("pull", "board1", "--run", "diskfull")):
            proj.deploy(*args)
    finally:
        proj.images = images
        proj.configure()
        proj.deploy("push", "board1")


# ---------------------------------------------------------------- an own app that writes without end (issue 20)


WRITER = """import os
os.makedirs("../out", exist_ok=True)
chunk = b"x" * (1 << 20)
with open("../out/big.bin", "wb") as f:
    for i in range(10240):  # 10 GB, on a 300 MB disk
        f.write(chunk)
        f.flush()
        if i % 16 == 0:
            print("[%d/10240]" % i, flush=True)
"""


def test_an_own_app_writing_10_gb_is_stopped_at_the_disk_and_keeps_what_it_wrote(small):
    proj = small.proj
    app = proj.root / "writer"
    (app / "src").mkdir(parents=True, exist_ok=True)
    (app / "src" / "main.py").write_text(WRITER)
    proj.app_extra = {"source": "writer", "workdir": "src", "command": "python3 main.py", "outputs": "../out"}
    proj.configure()
    try:
        assert proj.deploy_json("push", "board1")["boards"][0]["ok"]
        r = proj.deploy("run", "board1", "--run-id", "writer", "--json", check=False, timeout=600)
        row = json.loads(r.stdout)["boards"][0]
        assert r.returncode == 1 and not row["ok"] and "Traceback" not in r.stderr, row
        assert "disk" in row["reason"] and "kept" in row["reason"], row["reason"]
        big = proj.app_dir / "runs" / "writer" / "tree" / "out" / "big.bin"
        assert big.stat().st_size > 50 * MiB  # what it wrote is kept
        assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) <= 1
    finally:
        shutil.rmtree(proj.app_dir / "runs" / "writer", ignore_errors=True)
        proj.app_extra = {}
        proj.configure()
    assert proj.deploy_json("push", "board1")["boards"][0]["ok"]  # the disk is free again: all works
