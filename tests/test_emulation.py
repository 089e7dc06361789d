"""The emulated aarch64 board runtime, end to end: rootfs, user, chrooted sshd, paramiko, Python 3.9.

Slow (the first run builds the rootfs with debootstrap, ~3 min on a fast mirror, more on a slow
one; later runs reuse ~/.cache/atlas-deploy/rootfs) and needs root, qemu-user-static and
debootstrap. Each test cleans up exactly what it created: its user, its files, its sshd (by PID)
and the mounts (released through stop_chroot / mounted).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from deploy.sandbox import emulation
from deploy.sandbox.emulation import (
    add_board_user,
    chroot_run,
    ensure_rootfs,
    inside,
    start_chroot_sshd,
    stop_chroot,
)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="aarch64 emulation needs root"),
    pytest.mark.skipif(
        not (shutil.which("qemu-aarch64-static") and shutil.which("debootstrap")),
        reason="needs qemu-user-static and debootstrap",
    ),
]

# The agent's dependencies for a cp39 aarch64 board (the 200I DK A2 / our emulated board),
# restricted to manylinux tags a glibc-2.27 system accepts (Ubuntu 18.04 on the Atlas 200 DK).
WHEELS_CP39 = ("numpy==2.0.2", "pillow==11.3.0", "onnxruntime==1.19.2")
MANYLINUX_AARCH64 = ["manylinux2014_aarch64"] + [f"manylinux_2_{minor}_aarch64" for minor in range(17, 28)]


def test_binfmt_runs_aarch64_binaries_inside_a_chroot():
    emulation.ensure_binfmt()
    flags = emulation._binfmt_flags()
    assert flags is not None and "F" in flags


def test_needs_root(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(emulation.EmulationError, match="needs root"):
        ensure_rootfs(tmp_path / "rootfs")


def fake_debootstrap(script: str):
    """Stand-in for debootstrap's effect on the target dir, to test the build bookkeeping quickly."""
    return lambda target, mirror=None: ["sh", "-c", script.replace("TARGET", str(target))]


def test_interrupted_build_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(
        emulation,
        "debootstrap_command",
        fake_debootstrap("mkdir -p TARGET/etc; echo 'E: network gone'; exit 1"),
    )
    with pytest.raises(emulation.EmulationError, match="debootstrap failed: E: network gone"):
        ensure_rootfs(tmp_path / "rootfs")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rootfs.lock"]


def test_build_is_renamed_into_place_stamped_and_without_host_keys(tmp_path, monkeypatch):
    skel = "case $- in\n    *i*) ;;\n      *) return;;\nesac\n"
    monkeypatch.setattr(
        emulation,
        "debootstrap_command",
        fake_debootstrap(
            "mkdir -p TARGET/etc/skel TARGET/etc/ssh TARGET/var/cache/apt/archives && "
            f"printf '{skel}' > TARGET/etc/skel/.bashrc && touch TARGET/etc/ssh/ssh_host_ed25519_key "
            "TARGET/etc/ssh/ssh_host_ed25519_key.pub TARGET/etc/ssh/sshd_config TARGET/var/cache/apt/archives/x.deb"
        ),
    )
    (tmp_path / ".rootfs.build-1").mkdir()  # left by an interrupted run
    built = ensure_rootfs(tmp_path / "rootfs")
    assert built == tmp_path / "rootfs"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rootfs.lock", "rootfs"]
    assert sorted(p.name for p in (built / "etc/ssh").iterdir()) == ["sshd_config"]
    assert (built / "run/sshd").is_dir() and not list((built / "var/cache/apt/archives").iterdir())
    assert emulation._stamp_ok(built)
    monkeypatch.setattr(emulation, "debootstrap_command", fake_debootstrap("exit 99"))
    assert ensure_rootfs(tmp_path / "rootfs") == built  # cached: not rebuilt


@pytest.fixture(scope="module")
def rootfs() -> Path:
    return ensure_rootfs(progress=lambda line: print(line, file=sys.stderr))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_ssh_banner(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.settimeout(20)
                if sock.recv(64).startswith(b"SSH-2.0-"):
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"sshd did not answer on port {port}:\n{log.read_text()}")


@pytest.fixture
def board_user(rootfs):
    """A throwaway board login inside the shared rootfs, removed afterwards with its home."""
    user = f"t{uuid.uuid4().hex[:8]}"
    home = f"/home/{user}"
    add_board_user(rootfs, user, home)
    yield user, home
    chroot_run(rootfs, ["/usr/sbin/userdel", "--remove", user])


def ssh_keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().split()[1]


def exec_(client, command: str) -> tuple[int, str, str]:
    _, stdout, stderr = client.exec_command(command, timeout=120)
    out = stdout.read().decode()
    return stdout.channel.recv_exit_status(), out, stderr.read().decode()


@pytest.mark.slow
def test_chrooted_sshd_serves_an_aarch64_board(rootfs, board_user, tmp_path):
    paramiko = pytest.importorskip("paramiko")
    user, home = board_user
    uid, gid = emulation.user_ids(rootfs, user)

    # What deploy/sandbox.py does for a real sandbox board: own host key, authorized key, config.
    host_pub = ssh_keygen(tmp_path / "host_key")
    ssh_keygen(tmp_path / "client_key")
    conf_dir = f"/etc/ssh/test-{user}"
    inside(rootfs, conf_dir).mkdir(mode=0o755)
    try:
        shutil.copyfile(tmp_path / "host_key", inside(rootfs, f"{conf_dir}/host_key"))
        os.chmod(inside(rootfs, f"{conf_dir}/host_key"), 0o600)
        ssh_dir = inside(rootfs, f"{home}/.ssh")
        ssh_dir.mkdir(mode=0o700)
        (ssh_dir / "authorized_keys").write_text((tmp_path / "client_key.pub").read_text())
        os.chmod(ssh_dir / "authorized_keys", 0o600)
        for path in (ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(path, uid, gid)
        with open(inside(rootfs, f"{home}/.bashrc"), "a") as bashrc:
            bashrc.write("export AFTER_THE_GUARD=1\n")  # where the Atlas SD-card script puts CANN exports
        port = free_port()
        inside(rootfs, f"{conf_dir}/sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {conf_dir}/host_key\n"
            f"AuthorizedKeysFile .ssh/authorized_keys\nAllowUsers {user}\nPidFile none\n"
            "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin no\nSubsystem sftp internal-sftp\n"
        )

        log = tmp_path / "sshd.log"
        started = time.monotonic()
        proc = start_chroot_sshd(rootfs, f"{conf_dir}/sshd_config", log)
        try:
            wait_for_ssh_banner(port, proc, log)
            print(f"sshd up in {time.monotonic() - started:.1f}s", file=sys.stderr)

            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            client.get_host_keys().add(
                f"[127.0.0.1]:{port}", "ssh-ed25519", paramiko.Ed25519Key(data=_b64(host_pub))
            )
            client.connect(
                "127.0.0.1",
                port=port,
                username=user,
                key_filename=str(tmp_path / "client_key"),
                look_for_keys=False,
                allow_agent=False,
                timeout=30,
                banner_timeout=60,
                auth_timeout=60,
            )
            try:
                assert exec_(client, "uname -m") == (0, "aarch64\n", "")
                started = time.monotonic()
                code, out, err = exec_(client, "python3 -c 'import sys; print(sys.version_info[:2])'")
                print(f"python3 startup over ssh: {time.monotonic() - started:.1f}s", file=sys.stderr)
                assert (code, out) == (0, "(3, 9)\n"), err
                # A non-interactive command: bash reads ~/.bashrc but the stock guard returns first,
                # the trap the real boards set (CANN exports appended after the guard are not seen).
                code, out, _ = exec_(client, 'echo "$HOME ${AFTER_THE_GUARD:-unset}"; exit 7')
                assert (code, out) == (7, f"{home} unset\n")
                code, out, _ = exec_(client, "bash -ic 'echo ${AFTER_THE_GUARD:-unset}' 2>/dev/null")
                assert out.strip().endswith("1")
                # a pty (ssh -t) needs /dev/pts and /dev/ptmx inside the chroot
                _, stdout, _ = client.exec_command("tty", get_pty=True, timeout=60)
                assert stdout.read().decode().strip().startswith("/dev/pts/")
                with client.open_sftp() as sftp:
                    with sftp.open("hello.txt", "w") as remote:
                        remote.write("hi")
                    assert sftp.stat("hello.txt").st_size == 2
                assert inside(rootfs, f"{home}/hello.txt").read_text() == "hi"
            finally:
                client.close()
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            released = stop_chroot(rootfs, proc.pid)
        if released:
            assert emulation._mounts_under(rootfs) == []
    finally:
        shutil.rmtree(inside(rootfs, conf_dir))


def _b64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


def tiny_conv_onnx(path: Path) -> None:
    """A small real network (conv-relu-pool-gemm on 1x3x224x224) to time inference under qemu."""
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype("float32"), "w1"),
        numpy_helper.from_array(rng.standard_normal((32, 16, 3, 3)).astype("float32"), "w2"),
        numpy_helper.from_array(rng.standard_normal((32, 10)).astype("float32"), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7  # readable by every onnxruntime we ship, down to 1.14 (cp37)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.mark.slow
def test_agent_dependencies_import_and_infer_under_emulation(rootfs, tmp_path):
    wheels = tmp_path / "wheels"
    platforms = [arg for tag in MANYLINUX_AARCH64 for arg in ("--platform", tag)]
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", *platforms,
         "--python-version", "3.9", "--implementation", "cp", "--abi", "cp39", "--no-deps",
         "-d", str(wheels), *WHEELS_CP39],
        capture_output=True, text=True,
    )  # fmt: skip
    if download.returncode != 0:
        pytest.skip(f"cannot download the aarch64 wheels: {download.stderr.strip().splitlines()[-1:]}")

    site_inside = f"/opt/test-{uuid.uuid4().hex[:8]}"
    site = inside(rootfs, site_inside)
    try:
        for wheel in sorted(wheels.glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)  # a wheel is a zip; site/ is what bundle.py ships
        # zipfile drops mode bits; shared objects load without x (dlopen only needs read).
        tiny_conv_onnx(site / "tiny.onnx")
        script = (
            "import time, numpy, PIL, onnxruntime as ort\n"
            "s = ort.InferenceSession('/opt/SITE/tiny.onnx', providers=['CPUExecutionProvider'])\n"
            "x = numpy.random.rand(1, 3, 224, 224).astype('float32')\n"
            "s.run(None, {'image': x})\n"
            "t = time.perf_counter(); y = s.run(None, {'image': x})[0]; dt = time.perf_counter() - t\n"
            "print(numpy.__version__, PIL.__version__, ort.__version__, y.shape, '%.3f' % dt)\n"
        ).replace("/opt/SITE", site_inside)
        started = time.monotonic()
        result = chroot_run(
            rootfs,
            ["/usr/bin/python3", "-c", script],
            env={"PYTHONPATH": site_inside, "OMP_NUM_THREADS": "2"},
            timeout=600,
        )
        print(f"import + load + 2 runs: {time.monotonic() - started:.1f}s; {result.stdout}", file=sys.stderr)
        assert result.returncode == 0, result.stderr
        versions = [w.split("==")[1] for w in WHEELS_CP39]
        assert result.stdout.split()[:3] == versions
        assert result.stdout.split()[3:5] == ["(1,", "10)"]
    finally:
        shutil.rmtree(site, ignore_errors=True)
