"""Your own app on the board (issue 20): a tree shipped with its layout kept, its command run per run in a
working tree of its own, what it writes pulled back; on real sandbox sshd boards, through the CLI.

The app here is written the way Huawei's samples are: ``src/main.py`` reaches its helper library through a
relative ``sys.path`` trick (``../lib``), imports a package with a compiled wheel from its requirements.txt
(msgpack), writes next to its code (``../out``), and prints ``[n/N]`` counters.
"""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
import time
from pathlib import Path

import pytest

from deploy.testing import SANDBOX_BOARD, Project

MAIN = textwrap.dedent('''
    import os
    import sys
    import time

    path = os.path.dirname(os.path.abspath(__file__))
    sys.path.append(os.path.join(path, "../lib"))
    import helper  # noqa: E402

    SRC = os.path.realpath(__file__).rsplit("/", 1)[0]
    out = os.path.join(SRC, "../out")
    os.makedirs(out, exist_ok=True)
    mode = os.environ.get("OWNAPP_MODE", "")
    if mode.startswith("fail"):
        print("boom: the model file is missing", file=sys.stderr)
        sys.exit(3)
    if mode == "slow":
        for i in range(600):
            print("tick", i, flush=True)
            time.sleep(0.1)
    images = sorted(os.listdir(sys.argv[1]))
    for i, name in enumerate(images, 1):
        size = os.path.getsize(os.path.join(sys.argv[1], name))
        with open(os.path.join(out, name + ".txt"), "w") as f:
            f.write(repr(helper.pack({"name": name, "size": size})))
        print("[%d/%d] %s %d bytes" % (i, len(images), name, size), flush=True)
    print("python", sys.version.split()[0], file=sys.stderr)
''')
HELPER = "import msgpack\n\n\ndef pack(obj):\n    return msgpack.unpackb(msgpack.packb(obj))\n"


def make_app(root: Path) -> Path:
    app = root / "myapp"
    (app / "src").mkdir(parents=True)
    (app / "lib").mkdir()
    (app / "src" / "main.py").write_text(MAIN)
    (app / "lib" / "helper.py").write_text(HELPER)
    (app / "requirements.txt").write_text("msgpack  # a compiled wheel\n")
    (app / "notes.caffemodel").write_bytes(b"excluded")
    (app / "src" / "__pycache__").mkdir()
    (app / "src" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"excluded")
    return app


OWN = {"source": "myapp", "workdir": "src", "command": "python3 main.py {images}", "outputs": "../out",
       "requirements": "requirements.txt", "exclude": ["**/*.caffemodel"]}


def own_project(root: Path, boards=None, **extra) -> Project:
    project = Project(root, boards=boards or {"board1": dict(SANDBOX_BOARD)})
    make_app(project.root)
    project.app_extra = {**OWN, **extra}
    project.configure()
    return project


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    project = own_project(tmp_path_factory.mktemp("ownapp"))
    project.up()
    yield project
    assert project.down()


def release_dir(project: Project) -> Path:
    return project.app_dir / "releases" / project.current_release()


def release_intact(project: Project) -> list[str]:
    """Files of the current release whose bytes or mode differ from its manifest."""
    root = release_dir(project)
    bad = []
    for path, _size, sha, mode in json.loads((root / "MANIFEST.json").read_text())["files"]:
        p = root / path
        if hashlib.sha256(p.read_bytes()).hexdigest() != sha or (p.stat().st_mode & 0o777) != mode:
            bad.append(path)
    return bad


def test_push_ships_the_tree_with_its_layout_and_its_requirements(own):
    row = own.deploy_json("push", "board1")["boards"][0]
    assert row["ok"] and row["switched"] and row["health"]["status"] == "passed", row
    assert "import msgpack" in row["health"]["probe"]  # no health command: the requirements must import
    root = release_dir(own)
    assert (root / "app" / "src" / "main.py").is_file() and (root / "app" / "lib" / "helper.py").is_file()
    shipped = {row[0] for row in json.loads((root / "MANIFEST.json").read_text())["files"]}
    assert "app/notes.caffemodel" not in shipped and not [f for f in shipped if "__pycache__" in f]  # excluded
    assert (root / "site" / "msgpack").is_dir() and list((root / "site").glob("msgpack-*.dist-info"))
    assert (root / "app" / "src" / "main.py").stat().st_mode & 0o777 == 0o444  # the release is read-only
    app = json.loads((root / "app.json").read_text())
    assert app["kind"] == "command" and app["command"] == OWN["command"] and app["workdir"] == "src"
    again = own.deploy_json("push", "board1")["boards"][0]
    assert not again["switched"] and again["payload_bytes"] == 0


def test_run_pull_and_the_release_stays_byte_identical(own, tmp_path):
    own.deploy_json("push", "board1")
    photos = sorted(own.images.glob("*.jpg"))
    r = own.deploy("run", "board1", "--images", str(own.images))
    assert "[3/3]" in r.stdout and "python 3." in r.stderr, (r.stdout, r.stderr)
    assert "the command exited 0" in r.stdout
    pulled = own.deploy_json("pull", "board1")["boards"][0]
    out = Path(pulled["path"]) / "outputs"
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.name}.txt" for p in photos)
    assert "'size'" in (out / f"{photos[0].name}.txt").read_text()
    assert json.loads((Path(pulled["path"]) / "summary.json").read_text())["exit_status"] == 0
    assert not (Path(pulled["path"]) / "tree").exists()  # the working tree stays on the board
    assert not (release_dir(own) / "app" / "out").exists() and release_intact(own) == []


def test_two_runs_at_once_do_not_see_each_others_outputs(own, tmp_path):
    own.deploy_json("push", "board1")
    sets = []
    for i, photo in enumerate(sorted(own.images.glob("*.jpg"))[:2]):
        d = tmp_path / f"set{i}"
        d.mkdir()
        (d / photo.name).write_bytes(photo.read_bytes())
        sets.append((d, photo.name))
    procs = [own.start("run", "board1", "--images", str(d), "--run-id", f"pair-{i}", "--json")
             for i, (d, _) in enumerate(sets)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    for i, (_, name) in enumerate(sets):
        path = Path(own.deploy_json("pull", "board1", "--run", f"pair-{i}")["boards"][0]["path"])
        assert [p.name for p in (path / "outputs").iterdir()] == [f"{name}.txt"]
    assert release_intact(own) == []


def test_a_failing_command_fails_its_row_with_its_last_stderr_line(own):
    own.env = {**own.env, "OWNAPP_MODE": "fail"}
    own.configure()
    try:
        own.deploy_json("push", "board1")
        r = own.deploy("run", "board1", "--json", check=False)
        row = json.loads(r.stdout)["boards"][0]
        assert r.returncode == 1 and not row["ok"] and row["exit_status"] == 3
        assert "exited with status 3: boom: the model file is missing" in row["error"], row
        assert "Traceback" not in r.stderr
    finally:
        own.env.pop("OWNAPP_MODE")
        own.configure()


def test_a_command_not_found_on_the_board_is_exit_127_in_one_line(own):
    own.app_extra = {**OWN, "command": "no-such-program {images}"}
    own.configure()
    try:
        own.deploy_json("push", "board1")
        r = own.deploy("run", "board1", "--json", check=False)
        row = json.loads(r.stdout)["boards"][0]
        assert r.returncode == 1 and row["exit_status"] == 127
        assert "command not found on the board: no-such-program" in row["error"]
    finally:
        own.app_extra = dict(OWN)
        own.configure()


def test_stop_ends_a_long_command_and_keeps_its_log(own):
    own.env = {**own.env, "OWNAPP_MODE": "slow"}
    own.configure()
    try:
        own.deploy_json("push", "board1")
        proc = own.start("run", "board1", "--run-id", "slow-1", "--json")
        deadline = time.monotonic() + 60
        log = own.app_dir / "runs" / "slow-1" / "stdout.log"
        while time.monotonic() < deadline and "tick 3" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.1)
        own.deploy("stop", "board1", "--run", "slow-1")
        out, _ = proc.communicate(timeout=60)
        row = json.loads(out)["boards"][0]
        assert not row["ok"] and row["reason"] == "stopped by deploy stop", row
        attached = own.deploy_json("run", "board1", "--attach", "slow-1", check=False)["boards"][0]
        assert attached["reason"] == "stopped by deploy stop"
    finally:
        own.env.pop("OWNAPP_MODE")
        own.configure()


def test_an_outputs_path_that_is_a_link_is_never_followed(own):
    main = own.root / "myapp" / "src" / "main.py"
    original = main.read_text()
    main.write_text("import os\nos.symlink('/etc', os.path.join(os.path.dirname(os.path.abspath(__file__)), '../out'))\n")
    try:
        own.deploy_json("push", "board1")
        assert own.deploy_json("run", "board1", "--run-id", "linked")["boards"][0]["ok"]
        r = own.deploy("pull", "board1", "--run", "linked", check=False)
        assert r.returncode == 1 and "passes through a symbolic link on the board" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (own.root / "outputs" / "board1" / "linked").exists()
    finally:
        main.write_text(original)


def test_a_health_command_that_does_not_match_rolls_the_push_back(own):
    before = own.deploy_json("push", "board1")["boards"][0]["release"]
    own.app_extra = {**OWN, "health": {"command": "python3 -c \"print('version 2')\"", "expect": "^version 3$"}}
    own.configure()
    try:
        r = own.deploy("push", "board1", "--json", check=False)
        row = json.loads(r.stdout)["boards"][0]
        assert r.returncode == 1 and "does not match" in row["error"] and "rolled back to " + before in row["error"]
        assert own.current_release() == before
        own.app_extra = {**OWN, "health": {"command": "python3 -c \"print('version 3')\"", "expect": "^version 3$"}}
        own.configure()
        assert own.deploy_json("push", "board1")["boards"][0]["health"]["status"] == "passed"
    finally:
        own.app_extra = dict(OWN)
        own.configure()


def test_exec_runs_in_the_apps_workdir(own):
    own.deploy_json("push", "board1")
    r = own.deploy("exec", "board1", "--", "pwd")
    assert r.stdout.strip().endswith("/current/app/src")


# ---------------------------------------------------------------- bad input: one line, nothing touched


@pytest.mark.parametrize("extra, message", [
    ({"command": "python3 main.py {imgs}"}, "app.command: unknown placeholder {imgs}"),
    ({"workdir": "../elsewhere"}, "app.workdir: must stay inside app.source"),
    ({"workdir": "nope"}, "app.workdir: not a folder of app.source: nope"),
    ({"outputs": "../../../out"}, "app.outputs: must stay inside app.source"),
    ({"source": "missing"}, "app.source: not a folder"),
    ({"requirements": "nope.txt"}, "app.requirements: not a file of app.source"),
    ({"health": {"expect": "x"}}, "app.health.expect: goes with app.health.command"),
])
def test_inventory_mistakes_are_one_line_exit_2(tmp_path, extra, message):
    project = own_project(tmp_path, **extra)
    r = project.deploy("push", "board1", "--dry-run", check=False)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_model_placeholder_needs_app_models(tmp_path):
    from deploy.errors import InventoryError
    from deploy.inventory import parse

    (tmp_path / "src").mkdir()
    text = "app:\n  name: a\n  source: .\n  command: python3 x.py {model}\nboards:\n  b: {sandbox: true}\n"
    with pytest.raises(InventoryError, match=r"inventory.yaml:4: app.command: \{model\} needs app.models"):
        parse(text, tmp_path / "inventory.yaml")


def test_tree_mistakes_are_one_line_before_any_board_is_touched(tmp_path):
    project = own_project(tmp_path, include=["src/**", "nothing/**"])
    r = project.deploy("push", "board1", check=False)  # no sandbox board is up: a board would be exit 4
    assert r.returncode == 1 and "app.include: 'nothing/**' matches no file of app.source" in r.stderr
    project.app_extra = dict(OWN)
    project.configure()
    (project.root / "myapp" / "lib" / "secret").symlink_to("/etc/hostname")
    r = project.deploy("push", "board1", check=False)
    assert r.returncode == 1 and "lib/secret is a symlink to /etc/hostname, outside the app's tree" in r.stderr
    (project.root / "myapp" / "lib" / "secret").unlink()
    (project.root / "myapp" / "requirements.txt").write_text("msgpack\n-e git+https://example.com/x\n")
    r = project.deploy("push", "board1", check=False)
    assert r.returncode == 1 and "requirements.txt:2: not a requirement that resolves to a binary wheel" in r.stderr


def test_a_requirement_with_no_wheel_for_the_target_names_the_nearest_version(tmp_path):
    from deploy.errors import BuildError
    from deploy.release import wheelhouse
    from deploy.targets import PROFILES

    with pytest.raises(BuildError) as info:
        wheelhouse.requirements_site(PROFILES["atlas200dk"], "3.7", ["numpy==1.26.0"], cache=tmp_path)
    msg = str(info.value)
    assert "numpy==1.26.0: no binary wheel for target atlas200dk (Python 3.7, cp37m" in msg
    assert "the nearest version that has one is numpy==1.21.6" in msg


# ---------------------------------------------------------------- a simulated Atlas 200 DK


@pytest.mark.skipif(not Path(os.path.expanduser("~/.pyenv/versions/3.7.16/bin/python3.7")).exists(),
                    reason="no CPython 3.7 on this machine for the simulated DK")
def test_on_a_simulated_dk_python3_in_the_command_is_the_cann_3_7(tmp_path):
    project = own_project(tmp_path, boards={"dk1": {"sandbox": True, "target": "atlas200dk", "arch": "x86_64"}})
    project.up("dk1")
    try:
        assert project.deploy_json("push", "dk1")["boards"][0]["ok"]
        r = project.deploy("run", "dk1", "--images", str(project.images))
        assert "python 3.7." in r.stderr and "[3/3]" in r.stdout
        check = project.deploy_json("check", "dk1")["boards"][0]["findings"]
        python3 = next(f for f in check if f["check"] == "python3 in app.command")
        assert "Python 3.7" in python3["detail"] and "(3.6" in python3["detail"]
        assert next(f for f in check if f["check"] == "fonts")["ok"]
    finally:
        assert project.down()
