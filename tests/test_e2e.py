"""The trunk, end to end on a real sandbox board: push, run, pull, status, exec, env, host keys."""

from __future__ import annotations

import json
import os
from pathlib import Path

from deploy.testing import CAT, ESPRESSO, ROCKET, Project, pid_alive, top1


def test_push_run_pull_classifies_the_demo_photos(project):
    pushed = project.deploy_json("push", "board1")["boards"][0]
    assert pushed["ok"] and pushed["switched"] and pushed["payload_bytes"] > 10_000_000
    assert (project.app_dir / "current").resolve().name == pushed["release"]
    assert (project.app_dir / "current" / "site" / "onnxruntime").is_dir()  # the board needs no internet

    run = project.deploy_json("run", "board1")["boards"][0]
    assert run["ok"] and run["images_ok"] == 3 and run["images_failed"] == 0

    pulled = project.deploy_json("pull", "board1", "--run", run["run_id"])["boards"][0]
    out = Path(pulled["path"])
    assert out == (project.root / "outputs" / "board1" / run["run_id"]).resolve()
    records = {r["image"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert top1(records["chelsea.jpg"]) in CAT
    assert top1(records["coffee.jpg"]) in ESPRESSO
    assert top1(records["rocket.jpg"]) in ROCKET
    assert records["coffee.jpg"]["topk"][0][1] == "espresso"
    assert len(records["coffee.jpg"]["topk"]) == 5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == 3 and summary["failed"] == 0
    assert sorted(p.name for p in (out / "labelled").iterdir()) == ["chelsea.jpg", "coffee.jpg", "rocket.jpg"]
    assert not (out / "inputs").exists()

    # the human-readable pull prints a table of the classes
    text = project.deploy("pull", "board1", "--run", run["run_id"]).stdout
    assert "espresso" in text and "chelsea.jpg" in text


def test_run_with_local_images_reports_corrupt_files_and_goes_on(project, tmp_path):
    project.deploy("push", "board1")
    imgs = tmp_path / "imgs"
    (imgs / "sub").mkdir(parents=True)
    (imgs / "sub" / "cat photo.jpg").write_bytes((project.demo / "images" / "chelsea.jpg").read_bytes())
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (imgs / "empty.jpg").write_bytes(b"")
    r = project.deploy("run", "board1", "--images", str(imgs), "--json", check=False)
    assert r.returncode == 5, r.stderr  # partial: some images failed
    out = json.loads(r.stdout)
    assert out["exit_code"] == 5 and out["recap"] == {"targeted": 1, "ok": 0, "failed": 1, "skipped": 0}
    res = out["boards"][0]
    assert res["images_ok"] == 1 and res["images_failed"] == 2
    assert {e["image"] for e in res["errors"]} == {"broken.jpg", "empty.jpg"}
    pulled = project.deploy_json("pull", "board1")["boards"][0]
    records = [json.loads(x) for x in (Path(pulled["path"]) / "results.jsonl").read_text().splitlines()]
    ok = [r for r in records if r["ok"]]
    assert len(records) == 3 and len(ok) == 1 and top1(ok[0]) in CAT and ok[0]["image"] == "sub/cat photo.jpg"


def test_push_three_times_keeps_one_block_and_user_lines_byte_identical(project):
    bashrc = project.home / ".bashrc"
    project.deploy("push", "board1")
    # the user's own lines, before and after the block, with odd bytes and no trailing newline
    with open(bashrc, "ab") as f:
        f.write(b"\n# my own settings\nexport MY_VAR='caf\xc3\xa9 $HOME'\nalias ll='ls -alF'  ")
    from deploy.release.envblock import remove_block

    user_view = remove_block(bashrc.read_bytes().decode(), "classify")
    for topk in (3, 4, 5):  # three pushes, each a new release
        project.configure(topk=topk)
        project.deploy("push", "board1")
    text = bashrc.read_bytes().decode()
    assert text.count("# >>> atlas-deploy classify >>>") == 1
    assert text.count("# <<< atlas-deploy classify <<<") == 1
    assert remove_block(text, "classify") == user_view
    assert text.index(">>> atlas-deploy classify") < text.index("case $- in")
    assert (project.home / ".bashrc.deploy-backup").exists()


def test_env_takes_effect_in_non_interactive_ssh(project):
    project.deploy("push", "board1")
    # plain OpenSSH, non-interactive: bash reads ~/.bashrc, and our block runs before the guard returns
    r = project.ssh('echo "app=$HIAI_APP mode=$CLASSIFY_MODE"; python3 -c "import numpy, onnxruntime, PIL; print(onnxruntime.__file__)"')
    assert "app=classify mode=test" in r.stdout
    assert "/HIAI_PROJECTS/classify/current/site/onnxruntime/" in r.stdout
    # and `deploy exec` sources env.sh itself, in the current release directory
    r = project.deploy("exec", "board1", "--", "python3", "-c", "import os, sys; print(os.getcwd()); print(os.environ['CLASSIFY_MODE'])")
    assert "/HIAI_PROJECTS/classify/releases/" in r.stdout and r.stdout.strip().endswith("test")
    # secrets from the inventory go into env.sh (mode 0600) but never into our output
    env_sh = project.app_dir / "env.sh"
    assert oct(env_sh.stat().st_mode & 0o777) == "0o600"
    dry = project.deploy("push", "board1", "--dry-run")
    assert "s3cret-value-never-shown" not in dry.stdout + dry.stderr


def test_exec_quotes_arguments(project):
    project.deploy("push", "board1")
    r = project.deploy("exec", "board1", "--", "printf", "%s|", "a b", "$HOME", "'q'", ";rm -rf x")
    assert r.stdout == "a b|$HOME|'q'|;rm -rf x|"


def test_status_and_dry_run(project):
    project.deploy("push", "board1")
    st = project.deploy_json("status", "board1")["boards"][0]
    assert st["ok"] and st["current"] and st["env_sh"] and st["bashrc_blocks"] == 1
    assert st["facts"]["python"].startswith("3.")
    before = sorted(os.listdir(project.app_dir / "releases"))
    project.configure(topk=2)
    dry = project.deploy_json("push", "board1", "--dry-run")["boards"][0]
    assert dry["dry_run"] and dry["plan"]["send_files"] == 1  # only app.json changed
    assert sorted(os.listdir(project.app_dir / "releases")) == before
    project.configure()


def test_host_keys_are_verified(project):
    kh = project.root / ".deploy" / "known_hosts"
    good = kh.read_text()
    port = project.sandbox["port"]
    try:
        # a different key for the same host: always refused, even with --accept-new-host-key
        other = "AAAAC3NzaC1lZDI1NTE5AAAAIKo3Hr3ZsZkLX7m8h3N9bqkRxHc1XfZ3sF9lq8XvRc6m"
        kh.write_text(f"[127.0.0.1]:{port} ssh-ed25519 {other}\n")
        r = project.deploy("status", "board1", "--accept-new-host-key", check=False)
        assert r.returncode != 0 and "does NOT match" in r.stderr and "Traceback" not in r.stderr
        # unknown host: refused unless the user says so
        kh.write_text("")
        r = project.deploy("status", "board1", check=False)
        assert r.returncode != 0 and "unknown host key" in r.stderr and "--accept-new-host-key" in r.stderr
        project.deploy("status", "board1", "--accept-new-host-key")
        assert f"[127.0.0.1]:{port} ssh-ed25519" in kh.read_text()
        project.deploy("status", "board1")
    finally:
        kh.write_text(good)


def test_pull_never_follows_links_out_of_the_run(project):
    project.deploy("push", "board1")
    run = project.deploy_json("run", "board1", "-q")["boards"][0]
    run_dir = project.app_dir / "runs" / run["run_id"]
    os.symlink("/etc/passwd", run_dir / "passwd-link")
    pulled = project.deploy_json("pull", "board1", "--run", run["run_id"])["boards"][0]
    out = Path(pulled["path"])
    assert not (out / "passwd-link").exists()
    r = project.deploy("pull", "board1", "--run", "../../etc", check=False)
    assert r.returncode != 0 and "invalid run id" in r.stderr


def test_sandbox_down_stops_exactly_its_sshd(tmp_path, demo):
    proj = Project(tmp_path, demo)
    up = proj.deploy_json("sandbox", "up")[0]
    pid = up["pid"]
    assert pid_alive(pid) and up["running"]
    assert f"-p {up['port']} " in up["ssh_command"] and "UserKnownHostsFile=" in up["ssh_command"]
    # a second `up` finds it running and starts nothing new
    assert proj.deploy_json("sandbox", "up")[0]["pid"] == pid
    other = proj.deploy_json("sandbox", "status")[0]
    assert other["running"]
    proj.deploy("sandbox", "down", "--purge")
    assert not pid_alive(pid)
    status = proj.deploy_json("sandbox", "status")
    assert status == []  # purged: no state left behind


def test_exec_json_and_exit_status(project):
    project.deploy("push", "board1")
    r = project.deploy("exec", "board1", "--json", "--", "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert r.returncode == 3
    rows = json.loads(r.stdout)["boards"]
    assert rows[0].pop("seconds") >= 0  # every fleet row says how long its board took
    assert rows == [{"board": "board1", "ok": False, "exit_code": 3, "stdout": "out\n", "stderr": "err\n"}]
    r = project.deploy("exec", "board1", "--", "sh", "-c", "exit 4", check=False)
    assert r.returncode == 4
