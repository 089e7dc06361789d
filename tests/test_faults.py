"""Issue 22: faults a board meets in the field, each tried on a real sandbox board (sshd on loopback).

The environment goes through the release (item 1), every run ends with a reason (item 4), interrupted
pulls leave no debris (item 6), no file given to a run is silently dropped (item 7), the service's figures
are live while it crash-loops (item 9), the app lock and what a user sees when it is held (item 10), and run
ids are checked before any board is contacted (item 11). The full-disk cases (items 2, 3, 4, 5) are in
``test_faults_disk.py``: they need root for a loop-mounted board home.
"""

from __future__ import annotations

import pytest

from deploy.testing import TEST_ENV, Project


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, demo):
    """A project with board1 up and the demo pushed."""
    proj = Project(tmp_path_factory.mktemp("faults"), demo)
    proj.up()
    proj.deploy("push", "board1")
    yield proj
    assert proj.down()


def exec_out(proj: Project, script: str) -> str:
    return proj.deploy("exec", "board1", "--", "sh", "-c", script).stdout


# ---------------------------------------------------------------- 1: the environment is the release's


def test_an_env_that_breaks_python_is_reverted_with_the_release_and_checked_every_time(pushed):
    good = pushed.current_release()
    pushed.env = {**TEST_ENV, "PYTHONHOME": "/nonexistent"}
    pushed.configure()
    try:
        for _ in range(2):  # the same broken content pushed again is checked again, never "already at"
            r = pushed.deploy("push", "board1", check=False)
            assert r.returncode == 1 and "failed its health check" in r.stderr, r.stdout + r.stderr
            assert pushed.current_release() == good
            assert exec_out(pushed, 'echo "home=$PYTHONHOME"').strip() == "home="  # env.sh went back too
        run = pushed.deploy_json("run", "board1")["boards"][0]
        assert run["ok"] and run["images_ok"] == 3
    finally:
        pushed.env = dict(TEST_ENV)
        pushed.configure()


def test_an_env_only_change_is_a_new_release_of_one_small_file_checked_and_rolled_back(pushed):
    before = pushed.current_release()
    pushed.env = {**TEST_ENV, "CLASSIFY_MODE": "prod"}
    pushed.configure()
    try:
        row = pushed.deploy_json("push", "board1")["boards"][0]
        assert row["switched"] and row["release"] != before and row["objects"] == 1 and row["env_changed"]
        assert row["wire_bytes"] <= 4096, row["wire_bytes"]  # same objects, a new env.sh
        assert row["health"]["status"] == "passed" and row["health"]["ran"]
        assert exec_out(pushed, 'echo "$CLASSIFY_MODE"').strip() == "prod"
        releases = pushed.deploy_json("releases", "board1")["boards"][0]["releases"]
        envs = {r["id"]: r["env"] for r in releases}
        assert envs[row["release"]] == {"API_TOKEN": "***", "CLASSIFY_MODE": "prod"}
        assert envs[before]["CLASSIFY_MODE"] == "test"
        shown = pushed.deploy("releases", "board1").stdout + pushed.deploy("status", "board1").stdout
        assert "CLASSIFY_MODE=prod" in shown and "API_TOKEN=***" in shown and TEST_ENV["API_TOKEN"] not in shown
        back = pushed.deploy_json("rollback", "board1")["boards"][0]
        assert back["current"] == before
        assert exec_out(pushed, 'echo "$CLASSIFY_MODE"').strip() == "test"  # rollback undid the env change
        env_sh = pushed.app_dir / "env.sh"
        assert env_sh.is_symlink() and oct(env_sh.stat().st_mode & 0o777) == "0o600"
    finally:
        pushed.env = dict(TEST_ENV)
        pushed.configure()
        pushed.deploy("push", "board1")


# ---------------------------------------------------------------- 11: run ids before any board


def test_a_malformed_run_id_is_refused_before_the_board_is_contacted(tmp_path, demo):
    proj = Project(tmp_path, demo)  # board1 is never started: contacting it would be exit 4
    r = proj.deploy("pull", "board1", "--run", "../../etc", check=False)
    assert r.returncode == 2, r.stderr
    assert "--run" in r.stderr and "invalid run id '../../etc'" in r.stderr
