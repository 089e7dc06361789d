"""Issue 22: a board whose disk fills up (items 2, 3, 4, 5), on a real sandbox board whose home is a 300 MB
loop-mounted ext4 (root only: ``mount -o loop``), filled to the byte with a file the test owns.

Every case ends the same way: once the space is freed, every command works again without a hand on the board.
"""

from __future__ import annotations

import os
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

    def unfill(self) -> None:
        self.filler.unlink(missing_ok=True)

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
