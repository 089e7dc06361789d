"""C/C++ apps cross-built on the host (issue 21): ``app.build`` through ``deploy build`` / ``deploy push``.

A plain C++ app (tests/cpp_app: threads and the C++ standard library, Huawei's layout) built natively for
an x86_64 sandbox board and with Debian's aarch64 cross compilers against the emulated board's rootfs for
an aarch64 one; our own AscendCL app (tests/capi_app, samples' style) built against the simulated CANN's
headers and stub for a simulated DK and run there; and each way a build can go wrong, in one line before
any board is touched.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from deploy.testing import REPO, SANDBOX_BOARD, Project, aclapp

CPP = {"source": "app", "build": {"cmake": "src", "artifacts": ["out/main"]}, "workdir": "out",
       "command": "./main {images}", "outputs": "../results"}
ARM = {"sandbox": True, "target": "aarch64-cpu", "arch": "aarch64"}
ROOT = os.geteuid() == 0 and shutil.which("qemu-aarch64-static") is not None


def cpp_project(root: Path, boards: dict, app: str = "cpp_app", **extra) -> Project:
    project = Project(root, boards=boards)
    shutil.copytree(REPO / "tests" / app, project.root / "app")
    project.app_extra = {**CPP, **extra}
    project.configure()
    return project


@pytest.fixture(scope="module")
def cpp(tmp_path_factory):
    project = cpp_project(tmp_path_factory.mktemp("cpp"), {"board1": dict(SANDBOX_BOARD)})
    project.up("board1")
    yield project
    assert project.down()


def test_push_builds_runs_and_an_unchanged_tree_neither_builds_nor_sends(cpp):
    first = cpp.deploy_json("push", "board1")["boards"][0]
    assert first["ok"] and first["switched"], first
    main = cpp.app_dir / "current" / "app" / "out" / "main"
    assert main.is_file() and main.stat().st_mode & 0o111
    assert not (cpp.app_dir / "current" / "app" / "build").exists()  # the build folder does not travel
    r = cpp.deploy("run", "board1", "--images", str(cpp.images))
    assert "[3/3]" in r.stdout and "machine x86_64" in r.stderr
    pulled = Path(cpp.deploy_json("pull", "board1")["boards"][0]["path"])
    assert len((pulled / "outputs" / "sizes.txt").read_text().splitlines()) == 3
    builds = sorted((cpp.root / ".deploy" / "builds").iterdir())
    again = cpp.deploy_json("push", "board1")["boards"][0]
    assert not again["switched"] and again["payload_bytes"] == 0
    assert sorted((cpp.root / ".deploy" / "builds").iterdir()) == builds  # no second build


def test_deploy_build_says_where_the_build_went_without_touching_a_board(tmp_path):
    project = cpp_project(tmp_path, {"board1": dict(SANDBOX_BOARD)})  # never started
    row = project.deploy_json("build", "board1")["boards"][0]
    assert row["ok"] and row["arch"] == "x86_64" and Path(row["path"], "out", "main").is_file(), row
    assert project.deploy_json("build", "board1")["boards"][0]["cached"]


@pytest.mark.parametrize("mutate, message", [
    (lambda app: (app / "src" / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 3.5)\nproject(X)\n"
                                                             "add_executable(main nosuchfile.cpp)\n"),
     "the cmake step failed: CMake Error"),
    (lambda app: (app / "src" / "main.cpp").write_text("int main() { return undeclared_name; }\n"),
     "the make step failed: "),
    (lambda app: (app / "src" / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.5)\nproject(X)\nset(CMAKE_RUNTIME_OUTPUT_DIRECTORY \"../../../elsewhere\")\n"
        "add_executable(main main.cpp)\ntarget_link_libraries(main pthread)\n"),
     "the build left no out/main"),
    (lambda app: (app / "src" / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.5)\nproject(X)\nset(CMAKE_RUNTIME_OUTPUT_DIRECTORY \"../../../out\")\n"
        "file(WRITE ${CMAKE_BINARY_DIR}/h.cpp \"int helper() { return 1; }\")\n"
        "add_library(helper SHARED ${CMAKE_BINARY_DIR}/h.cpp)\nadd_executable(main main.cpp)\n"
        "target_link_libraries(main -Wl,--no-as-needed helper pthread)\n"),
     "out/main needs libhelper.so, which the board does not have"),
])
def test_build_mistakes_are_one_line_and_touch_no_board(tmp_path, mutate, message):
    project = cpp_project(tmp_path, {"board1": dict(SANDBOX_BOARD)})  # not started: a touched board would be exit 4
    mutate(project.root / "app")
    r = project.deploy("push", "board1", check=False)
    assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.slow  # builds against the emulated board's rootfs (debootstrap on a fresh machine)
@pytest.mark.skipif(not ROOT, reason="the emulated aarch64 board needs root and qemu-user-static")
def test_a_host_build_is_refused_for_an_aarch64_board(tmp_path):
    project = cpp_project(tmp_path, {"a1": dict(ARM)})
    (project.root / "app" / "src" / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.5)\nproject(X)\nfile(MAKE_DIRECTORY ${CMAKE_SOURCE_DIR}/../out)\n"
        "add_custom_target(copy ALL COMMAND ${CMAKE_COMMAND} -E copy /bin/true ${CMAKE_SOURCE_DIR}/../out/main)\n")
    r = project.deploy("build", "a1", check=False)
    assert r.returncode == 1 and "out/main is built for x86_64, the board is aarch64" in r.stderr, r.stderr


def test_toolchain_and_ddk_mistakes_are_one_line(tmp_path, monkeypatch):
    from deploy.cli import tools
    from deploy.errors import BuildError
    from deploy.inventory import parse

    (tmp_path / "app" / "src").mkdir(parents=True)
    shutil.copy(REPO / "tests" / "cpp_app" / "src" / "CMakeLists.txt", tmp_path / "app" / "src")
    (tmp_path / "app" / "src" / "main.cpp").write_text('#include "acl/acl.h"\nint main() { return 0; }\n')
    ddk = tmp_path / "x86ddk" / "runtime" / "lib64" / "stub"
    ddk.mkdir(parents=True)
    shutil.copy(next(p for p in Path("/lib/x86_64-linux-gnu").glob("libz.so*") if p.is_file()), ddk / "libascendcl.so")
    text = ("app:\n  name: c\n  source: app\n  build: {cmake: src, artifacts: [out/main]}\n  workdir: out\n"
            "  command: ./main\nboards:\n  dk: {host: 192.0.2.1, target: atlas200dk}\n"
            f"  dkx: {{host: 192.0.2.1, target: atlas200dk, ddk: {tmp_path / 'x86ddk'}}}\n")
    inv = parse(text, tmp_path / "inventory.yaml")
    monkeypatch.delenv("DDK_PATH", raising=False)
    from deploy.release.hashcache import HashCache

    cache = HashCache(tmp_path / "h.json")
    with pytest.raises(BuildError, match=r"dk: the app includes acl/acl.h but there is no Ascend DDK to build against: "
                                         r"set boards.dk.ddk .* arm64-linux folder"):
        tools.build_app(inv, inv.boards["dk"], cache)
    with pytest.raises(BuildError, match=r"dkx: ddk .*x86ddk is the x86_64 toolkit; the board is aarch64"):
        tools.build_app(inv, inv.boards["dkx"], cache)
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda n, *a, **k: None if "aarch64" in n else real_which(n, *a, **k))
    with pytest.raises(BuildError, match="needs aarch64-linux-gnu-g..: apt-get install g..-aarch64-linux-gnu"):
        tools.build_app(inv, inv.boards["dk"], cache)


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.skipif(not ROOT, reason="the emulated aarch64 board needs root and qemu-user-static")
def test_a_plain_cpp_app_cross_builds_and_runs_on_the_emulated_aarch64_board(tmp_path):
    project = cpp_project(tmp_path, {"a1": dict(ARM)})
    project.up("a1", timeout=1800)
    try:
        row = project.deploy_json("push", "a1")["boards"][0]
        assert row["ok"], row
        r = project.deploy("run", "a1", "--images", str(project.images))
        assert "[3/3]" in r.stdout and "machine aarch64" in r.stderr
    finally:
        assert project.down()


# ---------------------------------------------------------------- AscendCL apps on a simulated DK


def acl_project(root: Path, boards: dict) -> Project:
    """tests/capi_app as the user's app: its model and data in the tree as the samples keep them."""
    project = cpp_project(root, boards, app="capi_app", command="./main 6 2", outputs=".")
    app = project.root / "app"
    aclapp.convert(app / "model" / "classify.om")
    for photo in ("chelsea.jpg", "coffee.jpg", "rocket.jpg"):
        aclapp.photo_bin(photo, app / "data" / (photo[:-4] + ".bin"))
    return project


NO_PY37 = not Path.home().joinpath(".pyenv/versions/3.7.16/bin/python3.7").exists()


@pytest.mark.parametrize("arch", [
    pytest.param("x86_64", marks=pytest.mark.skipif(NO_PY37, reason="no CPython 3.7 here for the simulated DK")),
    pytest.param("aarch64", marks=[pytest.mark.slow, pytest.mark.timeout(2400),
                                   pytest.mark.skipif(not ROOT, reason="the emulated aarch64 DK needs root")]),
])
def test_an_acl_app_builds_against_the_simulated_ddk_and_classifies_on_a_simulated_dk(tmp_path, arch):
    project = acl_project(tmp_path, {"dk1": {"sandbox": True, "target": "atlas200dk", "arch": arch}})
    project.up("dk1", timeout=1800)
    try:
        row = project.deploy_json("push", "dk1")["boards"][0]
        assert row["ok"], row
        r = project.deploy("run", "dk1", "--json")
        run = json.loads(r.stdout)["boards"][0]
        assert run["ok"] and run["exit_status"] == 0, run
        log = Path(project.deploy_json("pull", "dk1")["boards"][0]["path"]) / "stdout.log"
        got = {(mode, name): top for mode, _, name, top in aclapp.answers(log.read_text())}
        assert got[("sync", "coffee.bin")] == got[("async", "coffee.bin")] == 967, got
        assert 281 <= got[("sync", "chelsea.bin")] <= 285
    finally:
        assert project.down()
