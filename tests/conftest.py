"""Shared fixtures: the demo assets and throwaway projects with their own sandbox boards.

Integration tests drive the same ``deploy`` commands a user types, against real OpenSSH
sshd processes they start themselves, and tear down exactly those (``sandbox down --purge``
stops the recorded PIDs and removes the boards' homes and users). The helpers are
``deploy.testing``'s, shared with the benchmarks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deploy.testing import CAT, DEMO, ESPRESSO, ROCKET, Project, build_demo, pid_alive, top1

# Re-exported for test files that still say `from conftest import ...`; new code imports deploy.testing.
__all__ = ["CAT", "ESPRESSO", "ROCKET", "Project", "pid_alive", "top1"]


@pytest.fixture(scope="session")
def demo() -> Path:
    """The demo model, labels and photos (built once and cached by `deploy model demo`; no torch)."""
    return build_demo(DEMO)


@pytest.fixture(scope="module")
def project(tmp_path_factory, demo):
    """A fresh project with sandbox board1 up; stopped and purged afterwards."""
    proj = Project(tmp_path_factory.mktemp("project"), demo)
    proj.up()
    yield proj
    assert proj.down()


@pytest.fixture(scope="module")
def many(tmp_path_factory, demo) -> Path:
    """600 photos (copies of the demo's: a folder of hard links is its own case, in test_faults)."""
    folder = tmp_path_factory.mktemp("many")
    photos = sorted((demo / "images").glob("*.jpg"))
    for i in range(600):
        shutil.copyfile(photos[i % len(photos)], folder / f"{i:04d}.jpg")
    return folder
