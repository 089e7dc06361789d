"""Staged rollouts whose next stage transfers while the stage before it checks (issue 24), on real sandbox boards.

The canary's health check is held open in the tests that must see the overlap (the real check runs once the
later boards are seen staged on disk), so nothing here depends on how fast this machine is: a later stage's
release is assembled beside its current one during the canary's check, and becomes current only after the
canary passed (board-side logs say when), or is removed when it failed or the host went away.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from deploy import fleet, inventory
from deploy.errors import DeployError, RolloutHeld
from deploy.link import ssh
from deploy.ops import push
from deploy.release.hashcache import HashCache
from deploy.testing import SANDBOX_BOARD, Project, wait_gone

NAMES = ("b1", "b2", "b3")


@pytest.fixture(scope="module")
def lab(tmp_path_factory, demo):
    proj = Project(tmp_path_factory.mktemp("overlap"), demo, boards={n: dict(SANDBOX_BOARD) for n in NAMES})
    proj.deploy_json("sandbox", "up", timeout=120)
    proj.homes = {n: Path(proj.status(n)["home"]) for n in NAMES}
    proj.deploy("push", "all")  # every board has a release to stay on
    yield proj
    assert proj.down()


def app_dir(lab, name: str) -> Path:
    return lab.homes[name] / "HIAI_PROJECTS" / lab.app


def current(lab, name: str) -> str | None:
    link = app_dir(lab, name) / "current"
    return link.readlink().name if link.is_symlink() else None


def staged(lab, name: str, rid: str) -> list[Path]:
    """The release's staging directories on a board that are fully assembled (their manifest written)."""
    return [p for p in (app_dir(lab, name) / "releases").glob(f".staging-{rid}-*") if (p / "MANIFEST.json").exists()]


def log_time(path: Path, rid: str, word: str) -> float | None:
    """When ``releases.log``/``health.log`` last said ``word`` of ``rid`` (board clock = this machine's)."""
    hits = [float(p[0]) for p in (ln.split() for ln in path.read_text().splitlines()) if p[1:3] == [rid, word]]
    return hits[-1] if hits else None


def new_release(lab, n: int) -> None:
    lab.env = {**lab.env, "ROUND": str(n)}
    lab.configure()


def rollout(lab, gates=None) -> dict[str, dict]:
    """``deploy push all --canary 1`` through the API, one connection per board; rows by board."""
    inv = inventory.load(lab.inventory)
    cache = HashCache(inv.state_dir / "hashcache.json")

    def work(board) -> dict:
        with ssh.Connection(ssh.endpoint_for(inv, board)) as conn:
            try:
                res = push.push(inv, board, conn, cache=cache, gate=(gates or {}).get(board.name, fleet.turn()))
            except DeployError as exc:
                return {"board": board.name, "ok": False, "skipped": isinstance(exc, RolloutHeld), "error": str(exc)}
        return {"board": board.name, "ok": True, "res": res}

    rows = fleet.run([inv.boards[n] for n in NAMES], work, fleet.Rollout(canary=1))
    return {r["board"]: r for r in rows}


def hold_canary_check(lab, monkeypatch, seen: dict) -> None:
    """The canary's check starts only once b2 and b3 are seen staged (or 60 s passed); what was seen is kept."""
    real = push.health_step

    def step(inv, board, conn, bundle, res, enabled, on_phase=None):
        if board.name == "b1":
            rid = bundle.release_id
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(staged(lab, n, rid) for n in ("b2", "b3")):
                time.sleep(0.05)
            seen.update({n: (bool(staged(lab, n, rid)), current(lab, n)) for n in ("b2", "b3")})
        return real(inv, board, conn, bundle, res, enabled, on_phase)

    monkeypatch.setattr(push, "health_step", step)


def test_a_passing_canary_lets_the_next_stage_switch_after_its_check(lab, monkeypatch):
    before = {n: current(lab, n) for n in NAMES}
    new_release(lab, 1)
    seen: dict = {}
    hold_canary_check(lab, monkeypatch, seen)
    rows = rollout(lab)
    assert all(r["ok"] for r in rows.values()), rows
    rid = rows["b1"]["res"].release
    # while the canary checked, the later boards had the release assembled beside their current one
    assert seen == {n: (True, before[n]) for n in ("b2", "b3")}, seen
    passed = log_time(app_dir(lab, "b1") / "health.log", rid, "pass")
    canary = rows["b1"]["res"].timeline
    for n in ("b2", "b3"):
        res = rows[n]["res"]
        assert res.switched and res.release == rid and res.health.status == "passed" and current(lab, n) == rid
        # transfer began before the canary's check ended; the switch came after its pass (board-side logs)
        assert res.timeline["sent"] < res.timeline["staged"] < canary["checked"] <= res.timeline["go"]
        assert log_time(app_dir(lab, n) / "releases.log", rid, "push") > passed
        assert res.gate_s > 0 and not staged(lab, n, rid)


def test_a_failing_canary_leaves_the_later_stage_on_its_previous_release(lab, monkeypatch):
    before = {n: current(lab, n) for n in NAMES}
    had = {n: sorted(p.name for p in (app_dir(lab, n) / "releases").iterdir()) for n in NAMES}
    bad = lab.root / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf" * 64)
    lab.app_extra = {"models": {"onnx": str(bad)}}
    new_release(lab, 2)
    seen: dict = {}
    hold_canary_check(lab, monkeypatch, seen)
    try:
        rows = rollout(lab)
    finally:
        lab.app_extra = {}
        new_release(lab, 1)
    assert not rows["b1"]["ok"] and "failed its health check" in rows["b1"]["error"], rows["b1"]
    assert seen == {n: (True, before[n]) for n in ("b2", "b3")}, seen  # they were staged: the overlap happened
    for n in NAMES:
        assert current(lab, n) == before[n]
    for n in ("b2", "b3"):
        assert rows[n]["skipped"] and "staged release removed" in rows[n]["error"], rows[n]
        # nothing of the staged release is left: not under its id, not as a staging directory
        assert sorted(p.name for p in (app_dir(lab, n) / "releases").iterdir()) == had[n]
    # the JSON rows through the CLI: the held boards are skipped, not failed
    lab.app_extra = {"models": {"onnx": str(bad)}}
    new_release(lab, 3)
    try:
        r = lab.deploy("push", "all", "--canary", "1", "--json", check=False)
    finally:
        lab.app_extra = {}
        new_release(lab, 1)
    out = json.loads(r.stdout)
    assert r.returncode == 1 and out["recap"]["failed"] == 1 and out["recap"]["skipped"] == 2, out
    assert {n: current(lab, n) for n in NAMES} == before


class _LostHost:
    """A gate whose host goes away while the board waits for the go: the connection is closed under it."""

    def __init__(self):
        self.conn = None

    def ready(self):
        return None

    def wait(self):
        self.conn.close()
        return True

    def release(self):
        pass


def test_a_staged_board_whose_host_dies_stays_on_its_release_and_the_next_push_works(lab):
    inv = inventory.load(lab.inventory)
    before = current(lab, "b2")
    new_release(lab, 4)
    inv = inventory.load(lab.inventory)
    gate = _LostHost()
    with ssh.Connection(ssh.endpoint_for(inv, inv.boards["b2"])) as conn:
        gate.conn = conn
        with pytest.raises(Exception):  # noqa: B017 - whatever the dead link raises; the board is what matters
            push.push(inv, inv.boards["b2"], conn, gate=gate)
    base = app_dir(lab, "b2")
    holder = (base / ".lock").read_text().split("\t")
    assert holder[0] == "push"
    assert wait_gone([int(holder[1])], 20)  # the board's push op saw the host go and ended
    assert current(lab, "b2") == before
    assert not [p for p in (base / "releases").iterdir() if p.name.startswith(".staging-")]  # removed at once
    row = lab.deploy_json("push", "b2")["boards"][0]
    assert row["ok"] and row["switched"] and row["health"]["status"] == "passed" and current(lab, "b2") != before
