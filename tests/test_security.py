"""Issue 23, the host's side, on a real sandbox board: inventory values are checked where they are parsed (no
ssh_config text from them, no alias bombs, no giant files), secrets reach env.sh and nothing else, the bundle
ships only files of the app, and board strings reach the terminal visible. Each test here failed on the code
before issue 23. The compromised-board tests are ``test_security_board.py``, the parsers' fuzzing
``test_security_fuzz.py``.
"""

from __future__ import annotations

import os
import resource
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from deploy.errors import InventoryError
from deploy.inventory import parse
from deploy.release import envblock
from deploy.targets import PROFILES
from deploy.testing import SANDBOX_BOARD, Project

SECRETS = {"API_TOKEN": "tok-4c0ffee-never-shown", "DB_PASSWORD": "pw-d00d-never-shown"}
NEW_SECRETS = {"API_TOKEN": "tok-5eed-never-shown-either", "DB_PASSWORD": "pw-beef-never-shown-either"}


@pytest.fixture(scope="module")
def project(tmp_path_factory, demo):
    proj = Project(tmp_path_factory.mktemp("secure"), demo, env={"CLASSIFY_MODE": "test", **SECRETS})
    proj.up()
    yield proj
    assert proj.down()


def one_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr[-3000:]
    return lines[0]


def run_limited(argv, cwd, env, timeout: float = 30, memory: int = 3 << 30) -> subprocess.CompletedProcess:
    """A command with at most ``memory`` bytes of address space, killed after ``timeout`` seconds (the test
    fails): how the inventory tests keep the code before issue 23 from taking the machine with it."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env,
                              preexec_fn=limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(map(str, argv[3:]))} still running after {timeout:.0f}s")


# ---------------------------------------------------------------- 1: inventory values that reach ssh_config


def test_inventory_user_and_host_cannot_write_ssh_config(project, tmp_path):
    marker = tmp_path / "pwned"
    inject = f"\n  ProxyCommand sh -c 'id > {marker}'"
    port = project.sandbox["port"]
    for board, field in (({"host": "127.0.0.1", "port": port, "user": "operator" + inject}, "user"),
                         ({"host": "127.0.0.1" + inject, "port": port}, "host"),
                         ({"host": "127.0.0.1", "port": port, "user": "-oProxyCommand=id"}, "user"),
                         ({"host": "127.0.0.1;id", "port": port}, "host"),
                         ({"host": "127.0.0.1", "port": port, "python": "python3 -c 'import os'"}, "python")):
        inv = tmp_path / "inventory.yaml"
        doc = yaml.safe_load(project.inventory.read_text())
        doc["boards"] = {"real2": board}
        inv.write_text(yaml.safe_dump(doc))
        r = subprocess.run([sys.executable, "-m", "deploy", "-i", str(inv), "status", "real2"], capture_output=True,
                           text=True, timeout=60, cwd=tmp_path, env=project.environ)
        assert r.returncode == 2 and f"boards.real2.{field}:" in one_line(r), r.stderr
    assert not marker.exists()


BASE = """\
app:
  name: classify
  models: {onnx: models/net.onnx}
  env: {MODE: test}
boards:
  b1: {host: 192.168.1.2, user: HwHiAiUser}
"""


@pytest.mark.parametrize(("old", "new", "where"), [
    ("user: HwHiAiUser", 'user: "HwHiAiUser\\n"', "boards.b1.user"),
    ("user: HwHiAiUser", "user: 'op er'", "boards.b1.user"),
    ("host: 192.168.1.2", 'host: "dk\\tx"', "boards.b1.host"),
    ("host: 192.168.1.2", "host: -oProxyCommand=id", "boards.b1.host"),
    ("host: 192.168.1.2", "host: 'fe80::1%eth0'", None),
    ("user: HwHiAiUser", 'user: HwHiAiUser, key: "id\\x00rsa"', "boards.b1.key"),
    ("user: HwHiAiUser", 'user: HwHiAiUser, jump: "bastion\\n"', "boards.b1.jump"),
    ("  b1:", '  "b1\\n":', "boards.b1\n"),
    ("onnx: models/net.onnx", 'onnx: "models/net\\n.onnx"', "app.models.onnx"),
    ("MODE: test", 'MODE: "a\\nexport PATH=/tmp"', "app.env.MODE"),
    ("MODE: test", 'MODE: "a\\tb"', None),
    ("MODE: test", "LD_PRELOAD: /tmp/x.so", "app.env.LD_PRELOAD"),
    ("MODE: test", "PATH: /tmp", "app.env.PATH"),
    ("  env: {MODE: test}", "  env: {PATH: /opt/bin}\n  env_unsafe: true", None),
])
def test_inventory_values_are_checked_where_they_are_parsed(tmp_path, old, new, where):
    text = BASE.replace(old, new)
    if where is None:
        parse(text, tmp_path / "inventory.yaml")
        return
    with pytest.raises(InventoryError) as err:
        parse(text, tmp_path / "inventory.yaml")
    assert "inventory.yaml:" in str(err.value) and f": {where}" in str(err.value)


def test_unsafe_env_keys_are_named_in_the_push_line(project):
    project.env = {"CLASSIFY_MODE": "test", **SECRETS, "LD_LIBRARY_PATH": "/opt/vendor/lib"}
    project.app_extra = {"env_unsafe": True}
    project.configure()
    try:
        r = project.deploy("push", "board1", "--dry-run")
        assert "env sets LD_LIBRARY_PATH" in r.stdout
        assert project.deploy_json("push", "board1", "--dry-run")["boards"][0]["env_unsafe"] == ["LD_LIBRARY_PATH"]
    finally:
        project.env = {"CLASSIFY_MODE": "test", **SECRETS}
        project.app_extra = {}
        project.configure()


# ---------------------------------------------------------------- 9: inventory size and aliases


def test_an_alias_bomb_is_refused_at_once(project, tmp_path):
    doc = yaml.safe_load(project.inventory.read_text())
    del doc["app"]["preprocess"]
    bomb = "  preprocess:\n    preset: imagenet\n    l0: &l0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
    inv = tmp_path / "inventory.yaml"
    inv.write_text(yaml.safe_dump(doc, sort_keys=False).replace("app:\n", "app:\n" + bomb, 1))
    t0 = time.monotonic()
    r = run_limited([sys.executable, "-m", "deploy", "-i", str(inv), "push", "board1", "--dry-run"], tmp_path,
                    project.environ)
    assert r.returncode == 2 and "aliases" in one_line(r) and time.monotonic() - t0 < 15


def test_a_huge_inventory_is_refused_before_it_is_parsed(project, tmp_path):
    inv = tmp_path / "inventory.yaml"
    with open(inv, "w") as f:
        f.write(project.inventory.read_text())
        line = "# " + "x" * 1000 + "\n"
        for _ in range(100_000):  # 100 MB
            f.write(line)
    t0 = time.monotonic()
    r = run_limited([sys.executable, "-m", "deploy", "-i", str(inv), "status", "board1"], tmp_path, project.environ)
    assert r.returncode == 2 and "larger than 1 MiB" in one_line(r) and time.monotonic() - t0 < 15


# ---------------------------------------------------------------- 8: only files of the app are shipped


def test_a_symlink_out_of_the_images_is_refused(project, tmp_path):
    outside = tmp_path / "shadow"
    outside.write_text("root:$6$never-shipped-hash:19000:0:99999:7:::\n")
    link = project.images / "shadow.jpg"
    link.symlink_to(outside)
    inside = project.images / "alias.jpg"
    inside.symlink_to(project.images / "chelsea.jpg")
    try:
        r = project.deploy("push", "board1", check=False)
        assert r.returncode == 1 and "outside" in one_line(r) and "shadow.jpg" in r.stderr
        releases = project.app_dir / "releases"
        assert not releases.exists() or not list(releases.rglob("shadow.jpg"))
        link.unlink()
        project.deploy("push", "board1")  # a link to a file inside the images folder is followed
        assert (project.app_dir / "current" / "images" / "alias.jpg").read_bytes() == \
            (project.images / "chelsea.jpg").read_bytes()
    finally:
        link.unlink(missing_ok=True)
        inside.unlink(missing_ok=True)


def test_a_labels_path_that_links_out_of_the_project_is_refused(project, tmp_path):
    outside = tmp_path / "labels.txt"
    outside.write_text("\n".join(f"class {i}" for i in range(1000)) + "\n")
    link = project.root / "labels.txt"
    link.symlink_to(outside)
    project.app_extra = {"labels": "labels.txt"}
    project.configure()
    try:
        r = project.deploy("push", "board1", "--dry-run", check=False)
        assert r.returncode == 1 and "app.labels" in one_line(r) and "outside" in r.stderr
    finally:
        project.app_extra = {}
        project.configure()
        link.unlink()


# ---------------------------------------------------------------- 7: secrets


def test_env_sh_is_never_readable_by_others_not_even_while_it_is_written(tmp_path, monkeypatch):
    from deploy.board import files

    modes = []
    real_fsync = os.fsync

    def fsync(fd):
        modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    umask = os.umask(0o022)
    try:
        files.write_atomic(tmp_path / "env.sh", b"export API_TOKEN=x\n", 0o600)
        files.write_atomic(tmp_path / "other", b"x", 0o644)
    finally:
        os.umask(umask)
    assert modes == [0o600, 0o600]
    assert stat.S_IMODE((tmp_path / "env.sh").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "other").stat().st_mode) == 0o644


def test_env_diffs_mask_old_and_new_secrets_by_key():
    target = PROFILES["x86_64-cpu"]
    old = envblock.env_sh("a", target, {"API_TOKEN": "old-t", "DB_PASSWORD": "old-p", "MODE": "1"})
    for env in ({"API_TOKEN": "new-t", "DB_PASSWORD": "old-p", "MODE": "1"}, {"MODE": "2"}):
        diff = envblock.env_diff(old, envblock.env_sh("a", target, env), env)
        assert diff and "old-" not in diff and "new-" not in diff
    changed = envblock.env_diff(old, envblock.env_sh("a", target, {"API_TOKEN": "new-t", "DB_PASSWORD": "old-p",
                                                                   "MODE": "1"}), {})
    assert "+export API_TOKEN='***' # changed" in changed and "+export DB_PASSWORD" not in changed


class ArgvWatcher:
    """The command lines of the board user's processes (the sandbox board is on this machine), sampled every few
    milliseconds while the commands run."""

    def __init__(self, uid: int):
        self.uid = uid
        self.seen: set[bytes] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            for d in os.listdir("/proc"):
                if d.isdigit():
                    try:
                        if os.stat(f"/proc/{d}").st_uid == self.uid:
                            self.seen.add(Path("/proc", d, "cmdline").read_bytes())
                    except OSError:
                        pass
            time.sleep(0.005)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_secrets_reach_env_sh_and_nothing_else(project):
    streams = []

    def deploy(*args, check=True):
        r = project.deploy(*args, check=check)
        streams.append(r.stdout + r.stderr)
        return r

    with ArgvWatcher(project.home.stat().st_uid) as argv:
        deploy("push", "board1")
        deploy("push", "board1", "--dry-run")
        deploy("push", "board1", "--dry-run", "--json")
        deploy("status", "board1")
        deploy("status", "board1", "--json")
        deploy("run", "board1")
        deploy("pull", "board1")
        deploy("report", "board1")
        project.env = {"CLASSIFY_MODE": "test", **NEW_SECRETS}  # changed: the dry run must hide old and new
        project.configure()
        changed = deploy("push", "board1", "--dry-run").stderr
        deploy("push", "board1", "--dry-run", "--json")
        project.env = {"CLASSIFY_MODE": "test"}  # removed: the old values must stay hidden
        project.configure()
        deploy("push", "board1", "--dry-run", "--json")
        project.env = {"CLASSIFY_MODE": "test", **NEW_SECRETS}
        project.boards = {"board1": {**SANDBOX_BOARD, "python": "/nonexistent/python3"}}
        project.configure()
        assert deploy("push", "board1", check=False).returncode != 0  # a failed push
        project.boards = {"board1": dict(SANDBOX_BOARD)}
        project.configure()
        deploy("push", "board1")
    secrets = [v.encode() for v in (*SECRETS.values(), *NEW_SECRETS.values())]
    for text in streams:
        assert not [s for s in secrets if s in text.encode()], text[-2000:]
    assert "+export API_TOKEN='***' # changed" in changed  # masked, and still said
    assert not [cmd for cmd in argv.seen for s in secrets if s in cmd]
    env_sh = project.app_dir / "env.sh"
    assert stat.S_IMODE(env_sh.stat().st_mode) == 0o600 and NEW_SECRETS["API_TOKEN"] in env_sh.read_text()
    for root in (project.root, project.home):
        for path in root.rglob("*"):
            if path in (project.inventory, env_sh) or path.is_symlink() or not path.is_file():
                continue
            if path.name == "env.sh" and path.parent.parent.name == "releases":  # each release's env.sh (0600)
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
                continue
            data = path.read_bytes()
            assert not [s for s in secrets if s in data], path
    project.env = {"CLASSIFY_MODE": "test", **SECRETS}
    project.configure()


# ---------------------------------------------------------------- 6: the board's own code, hostile file names


def test_an_image_name_with_escape_sequences_prints_visible(project, tmp_path):
    upload = tmp_path / "upload"
    upload.mkdir()
    name = "\x1b]0;pwned\x07\x1b[2Jcat.jpg"
    shutil.copy(project.images / "chelsea.jpg", upload / name)
    project.deploy("push", "board1")
    project.environ["COLUMNS"] = "400"  # a table cell is not wrapped in the middle of the name
    try:
        r = project.deploy("run", "board1", "--images", str(upload))
        pulled = project.deploy("pull", "board1")
    finally:
        del project.environ["COLUMNS"]
    for out in (r, pulled):
        assert "\x1b" not in out.stdout + out.stderr and "\x07" not in out.stdout + out.stderr
        assert "\\x1b]0;pwned\\x07\\x1b[2Jcat.jpg" in out.stdout + out.stderr
