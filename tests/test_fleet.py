"""Fleets: the fan-out engine's stages and thresholds, bad flags, and eight real sandbox boards at once."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from deploy import fleet
from deploy.errors import UsageError
from deploy.testing import SANDBOX_BOARD, Project
from deploy.testing.relay import Relay

# ---------------------------------------------------------------- the engine (no boards needed)


def boards(n):
    return [SimpleNamespace(name=f"b{i}") for i in range(n)]


@pytest.mark.parametrize(("total", "rollout", "want"), [
    (8, fleet.Rollout(), [8]),
    (10, fleet.Rollout(canary=1, batch="25%"), [1, 3, 3, 3]),
    (20, fleet.Rollout(serial="1,5,25%"), [1, 5, 5, 5, 4]),
    (3, fleet.Rollout(canary=5), [3]),
    (7, fleet.Rollout(batch="2"), [2, 2, 2, 1]),
])
def test_stages(total, rollout, want):
    assert fleet.stages(total, rollout) == want


@pytest.mark.parametrize(("rollout", "message"), [
    (fleet.Rollout(batch="0"), "--batch: must be at least 1"),
    (fleet.Rollout(max_fail="150%"), "--max-fail: a percentage must be 0-100%"),
    (fleet.Rollout(batch="x"), "--batch: expected a number of boards or a percentage"),
    (fleet.Rollout(forks=0), "--forks: must be at least 1"),
    (fleet.Rollout(batch="2", serial="1,2"), "--batch and --serial"),
])
def test_bad_rollouts_are_refused(rollout, message):
    with pytest.raises(UsageError, match=message):
        fleet.validate(8, rollout)


def test_max_fail_is_exceeded_not_equalled():
    failing = {"b0", "b1"}

    def work(b):
        return {"board": b.name, "ok": b.name not in failing}

    # 2 of 10 failed = 20%: not more than 20%, every board is tried
    rows = fleet.run(boards(10), work, fleet.Rollout(batch="2", max_fail="20%"))
    assert not any(r.get("skipped") for r in rows)
    # more than 1 failed: the first batch (b0, b1) exceeds it, the other eight are skipped
    rows = fleet.run(boards(10), work, fleet.Rollout(batch="2", max_fail="1"))
    assert [r["board"] for r in rows if r.get("skipped")] == [f"b{i}" for i in range(2, 10)]


def test_a_failed_canary_stops_the_rollout_and_forks_bound_concurrency():
    live, peak, lock = [0], [0], threading.Lock()

    def work(b):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.05)
        with lock:
            live[0] -= 1
        return {"board": b.name, "ok": b.name != "b0"}

    rows = fleet.run(boards(6), work, fleet.Rollout(canary=1))
    assert rows[0]["ok"] is False and all(r.get("skipped") for r in rows[1:])
    rows = fleet.run(boards(9), work, fleet.Rollout(forks=3))  # no stages: every board, 3 at a time
    assert sum(1 for r in rows if r["ok"]) == 8 and peak[0] == 3


# ---------------------------------------------------------------- the CLI, bad input touches nothing


@pytest.mark.parametrize("flags", [["--batch", "0"], ["--max-fail", "150%"], ["--serial", "1,x"]])
def test_bad_flags_one_line_exit_2(tmp_path, demo, flags):
    proj = Project(tmp_path, demo)  # board1 never started: a touched board would fail differently
    r = proj.deploy("push", "all", *flags, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / ".deploy" / "sandbox").exists()


def test_unknown_board_exit_2(tmp_path, demo):
    r = Project(tmp_path, demo).deploy("push", "nosuch", check=False)
    assert r.returncode == 2 and "no board or group named 'nosuch'" in r.stderr


# ---------------------------------------------------------------- eight real boards


@pytest.fixture(scope="module")
def lab(tmp_path_factory, demo):
    names = [f"b{i}" for i in range(1, 9)]
    proj = Project(tmp_path_factory.mktemp("lab"), demo, boards={n: dict(SANDBOX_BOARD) for n in names})
    proj.deploy_json("sandbox", "up", timeout=120)
    yield proj
    assert proj.down()


def change_host_key(proj: Project, board: str) -> None:
    """Make known_hosts hold another key for ``board`` (as if the board had been reinstalled)."""
    row = proj.status(board)
    other = proj.root / "other_key"
    if not other.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, b64 = (other.with_suffix(".pub")).read_text().split()[:2]
    host = f"[127.0.0.1]:{row['port']}"
    path = proj.root / ".deploy" / "known_hosts"
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith(host + " ")]
    path.write_text("\n".join([*lines, f"{host} {kind} {b64}"]) + "\n")


def test_eight_boards_one_down_one_changed_key(lab):
    lab.deploy("sandbox", "down", "b7")
    change_host_key(lab, "b8")
    r = lab.deploy("push", "all", "--json", check=False, timeout=600)
    out = json.loads(r.stdout)
    rows = {row["board"]: row for row in out["boards"]}
    assert r.returncode == 4 == out["exit_code"]  # the worst documented code: unreachable (4) over host key (3)
    assert out["recap"] == {"targeted": 8, "ok": 6, "failed": 2, "skipped": 0, "applied": 6, "healthy": 6,
                            "unchanged": 0}
    assert all(rows[f"b{i}"]["ok"] and rows[f"b{i}"]["switched"] for i in range(1, 7))
    assert not rows["b7"]["ok"] and rows["b7"]["exit_code"] == 4
    assert not rows["b8"]["ok"] and rows["b8"]["exit_code"] == 3 and "host key" in rows["b8"]["error"].lower()
    releases = {rows[f"b{i}"]["release"] for i in range(1, 7)}
    assert len(releases) == 1  # one release, built once, for the six

    # a canary that fails stops the rollout: nobody else is started
    r = lab.deploy("push", "b7,b1,b2", "--canary", "1", "--json", check=False)
    rows = json.loads(r.stdout)["boards"]
    assert [row["board"] for row in rows if row.get("skipped")] == ["b1", "b2"] and r.returncode == 4


def use_model(proj: Project, model: Path | None) -> None:
    proj.app_extra = {"models": {"onnx": str(model)}} if model else {}
    proj.configure()


def test_a_model_that_cannot_load_is_rolled_back_on_every_board(lab):
    boards = ["b1", "b2", "b4", "b5"]
    lab.deploy("push", ",".join(boards))  # the demo release (already there after the first test: no change)
    before = {b: lab.current_release(b) for b in boards}
    bad = lab.root / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf" * 64)
    use_model(lab, bad)
    try:
        # the canary fails its health check and rolls back: nobody else is started
        r = lab.deploy("push", ",".join(boards), "--canary", "1", "--json", check=False)
        out = json.loads(r.stdout)
        assert r.returncode == 1 == out["exit_code"], r.stderr
        assert out["recap"] == {"targeted": 4, "ok": 0, "failed": 1, "skipped": 3, "applied": 0, "healthy": 0,
                                "unchanged": 0}
        # no stages: every board tries, every board fails the check and is back on its own previous release
        r = lab.deploy("push", ",".join(boards), "--json", check=False)
        out = json.loads(r.stdout)
        assert r.returncode == 1 and out["recap"]["failed"] == 4, r.stderr
        for row in out["boards"]:
            assert "failed its health check" in row["error"], row
            assert row["error"].endswith(f"rolled back to {before[row['board']]}"), row
    finally:
        use_model(lab, None)
    assert {b: lab.current_release(b) for b in boards} == before


def test_a_board_that_drops_mid_push_keeps_its_release_and_the_others_go_on(lab):
    """b3 is reached through a relay that resets the connection after 2 MB of the push: a board losing
    its link halfway through the model. The others switch and pass their check; b3 stays on what it had."""
    import onnx

    model = onnx.load(str(lab.demo / "models" / "efficientnet_lite0.onnx"))
    onnx.helper.set_model_props(model, {"variant": "drop-test"})  # same network, new bytes: 13 MB to send
    variant = lab.root / "variant.onnx"
    onnx.save(model, str(variant))
    lab.deploy("push", "b1,b2,b3,b4")
    before = lab.current_release("b3")
    with Relay(lab.status("b3")["port"], cut_after=2 << 20).start() as relay:
        lab.boards["b3cut"] = lab.relay_board(relay.port, "b3")
        use_model(lab, variant)
        try:
            r = lab.deploy("push", "b1,b3cut,b2,b4", "--json", check=False)
        finally:
            del lab.boards["b3cut"]
            use_model(lab, variant)
        assert relay.stats()["cuts"] == 1
    out = json.loads(r.stdout)
    rows = {row["board"]: row for row in out["boards"]}
    assert r.returncode == 4 == rows["b3cut"]["exit_code"], (r.stderr, rows["b3cut"])
    assert out["recap"] == {"targeted": 4, "ok": 3, "failed": 1, "skipped": 0, "applied": 3, "healthy": 3,
                            "unchanged": 0}
    new = {rows[b]["release"] for b in ("b1", "b2", "b4")}
    assert len(new) == 1 and before not in new
    assert lab.current_release("b3") == before  # the previous release is still current
    try:
        again = lab.deploy_json("push", "b3")["boards"][0]  # the link is back: the push completes
        assert again["switched"] and again["release"] in new and again["health"]["status"] == "passed"
    finally:
        use_model(lab, None)



def test_overlap_a_stage_starts_once_the_one_before_is_released_and_its_gate_waits_for_it():
    """Boards release (past their transfer) then linger: the next stage starts meanwhile, its gate says None
    until the earlier stage finished, then True; a board that releases and then fails makes it False."""
    events, lock = [], threading.Lock()

    def work(b):
        t = fleet.turn()
        with lock:
            events.append((b.name, "start", t.ready()))
        if b.name in ("b0", "b1"):
            t.release()
            time.sleep(0.3)
        ok = t.wait()
        with lock:
            events.append((b.name, "go", ok))
        return {"board": b.name, "ok": b.name != "b0" or fail[0] is False}

    fail = [False]
    rows = fleet.run(boards(4), work, fleet.Rollout(batch="2"))
    assert all(r["ok"] for r in rows)
    starts = {e[0]: i for i, e in enumerate(events) if e[1] == "start"}
    gos = {e[0]: i for i, e in enumerate(events) if e[1] == "go"}
    # b2, b3 started before b0 and b1 finished (the overlap), and saw no verdict yet
    assert starts["b2"] < max(gos["b0"], gos["b1"]) and events[starts["b2"]][2] is None
    assert all(events[gos[b]][2] is True for b in ("b2", "b3"))

    events.clear()
    fail[0] = None  # b0 fails after releasing: the next stage starts but its gate says False
    rows = fleet.run(boards(4), work, fleet.Rollout(batch="2"))
    assert not rows[0]["ok"] and all(events[i][2] is False for i in range(len(events)) if events[i][0] in ("b2", "b3")
                                     and events[i][1] == "go")
    # without overlap the next stage starts after, with its verdict known
    events.clear()
    fail[0] = False
    fleet.run(boards(4), work, fleet.Rollout(batch="2", overlap=False))
    assert all(e[2] is True for e in events if e[0] in ("b2", "b3"))
