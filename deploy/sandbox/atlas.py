"""An Atlas-shaped sandbox board: what a sandbox board with an Ascend target gets on top of a plain one.

``deploy sandbox up dk1`` for ``{sandbox: true, target: atlas200dk}`` gives the board

* the login user ``HwHiAiUser`` (run as root; one Unix user shared by every simulated Atlas on
  the machine, each board with its own home given by sshd's ``SetEnv HOME=``, as the plain
  non-root sandbox does; a machine whose ``HwHiAiUser`` is not ours keeps the board's own user);
* the DK's two Pythons in a per-board overlay of ``/usr`` that is first on the board's ``PATH``
  (sshd ``SetEnv PATH=``; a real DK has them in /usr itself, which a sandbox must not touch):
  ``usr/bin/python3`` is Ubuntu 18.04's 3.6 and ``usr/bin/python3.7`` CANN's 3.7.5. Each is the
  machine's real CPython of that version where it has one (pyenv's 3.6.15 and 3.7.16 here);
  else ``python3`` is a stand-in that reports 3.6.9 and refuses to run anything, and
  ``python3.7`` the machine's (or the aarch64 rootfs's) own python3, which the board's facts
  then report, so releases are built for the version that really runs;
* ``npu-smi`` in ``usr/local/bin`` (the documented ``npu-smi info`` table, this target's chip);
* CANN in ``~/Ascend/nnrt/``: ``set_env.sh`` (``import acl`` works only after sourcing it) and
  the simulated pyACL runtime, plus ONNX Runtime for the board's interpreter in
  ``~/Ascend/nnrt/sim-deps/`` (the simulator executes models with it; last on PYTHONPATH); the
  simulated AscendCL C library in ``runtime/include/acl``, ``runtime/lib64`` (``capi.py``), which
  embeds that interpreter's shared libpython to run models with the same simulator.

Nothing here ships to a real board: it is the board, not the release.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

from ..errors import SandboxError
from ..targets import Target
from .host import link_or_copy, run, world_traversable

ASCEND = Path(__file__).parent / "ascend"
DK_USER = "HwHiAiUser"
SHARED = Path("/var/lib/atlas-deploy")  # run as root: what board users must reach lives here
_MARK = "atlas-deploy sandbox board"  # the passwd comment of users we created

# The system Pythons each Atlas target's image has, by where they sit in /usr: (path, version).
LAYOUTS = {
    "atlas200dk": (("usr/bin/python3", "3.6"), ("usr/bin/python3.7", "3.7")),
    "atlas200i-a2": (("usr/bin/python3", "3.9"), ("usr/bin/python3.9", "3.9")),
}
STAND_IN_36 = """#!/bin/sh
# Stand-in for Ubuntu 18.04's /usr/bin/python3 (3.6.9) on a simulated Atlas board: this machine has
# no CPython 3.6. It reports the version and runs nothing, as the agent could not run on 3.6 either.
case "$1" in --version|-V) echo "Python 3.6.9"; exit 0;; esac
echo "python3 (3.6.9 stand-in of a simulated Atlas 200 DK): Python 3.6 cannot run this; use python3.7" >&2
exit 1
"""


def is_atlas(target: Target) -> bool:
    return target.backend == "acl"


def dk_user() -> str | None:
    """``HwHiAiUser`` if it is free or ours; None if the machine has its own (then keep the board's user)."""
    try:
        entry = pwd.getpwnam(DK_USER)
    except KeyError:
        return DK_USER
    return DK_USER if entry.pw_gecos == _MARK else None


def ensure_dk_user() -> None:
    """The shared ``HwHiAiUser`` whose passwd home is an empty directory (each board sets its own HOME)."""
    home = SHARED / DK_USER
    try:
        pwd.getpwnam(DK_USER)
    except KeyError:
        run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/bash", "--user-group",
              "--comment", _MARK, DK_USER])  # fmt: skip
    run(["usermod", "-p", "*", DK_USER])  # key logins only (sshd refuses a locked '!' account)
    home.mkdir(parents=True, exist_ok=True)
    shutil.chown(home, DK_USER, DK_USER)


def find_cpython(mm: str) -> Path | None:
    """A real CPython ``mm`` ("3.7") on this machine: pyenv's newest patch release, else the system's."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    found = sorted(glob.glob(str(root / "versions" / f"{mm}.*" / "bin" / f"python{mm}")), key=_patch_level)
    for cand in [*reversed(found), f"/usr/bin/python{mm}", f"/usr/local/bin/python{mm}"]:
        if os.access(cand, os.X_OK):
            return Path(cand)
    return None


def _patch_level(path: str) -> int:
    m = re.search(r"/versions/\d+\.\d+\.(\d+)/", path)
    return int(m.group(1)) if m else -1


def shareable(python: Path) -> Path:
    """``python`` where another Unix user can run it.

    pyenv's interpreters live in root's 0700 home. Run as root, the version's tree is copied
    once to /var/lib/atlas-deploy/python/ and its RUNPATH (pyenv links libpython with an
    absolute one) rewritten in place to ``$ORIGIN/../lib``, so the copy loads its own library.
    """

    if os.geteuid() != 0 or world_traversable(python.parent):
        return python
    prefix = python.parents[1]
    dest = SHARED / "python" / prefix.name
    exe = dest / "bin" / python.name
    if not exe.exists():
        tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        run(["cp", "-a", str(prefix), str(tmp)])
        _relative_runpath(tmp / "bin" / python.name, str(prefix / "lib"))
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    return exe


def _relative_runpath(exe: Path, old: str) -> None:
    """Overwrite the absolute RUNPATH ``old`` in ``exe`` with ``$ORIGIN/../lib`` (same slot, NUL padded)."""
    data = exe.read_bytes()
    needle = old.encode() + b"\0"
    new = b"$ORIGIN/../lib"
    if needle not in data or len(new) > len(old):
        return  # a static build, or an unexpected layout: leave it as built
    exe.write_bytes(data.replace(needle, new + b"\0" * (len(needle) - len(new)), 1))


def interpreters(target: Target, rootfs: Path | None) -> list[tuple[str, str, str]]:
    """[(overlay path, link target or "stand-in-3.6", what it is)] for the target's system Pythons."""
    out = []
    for rel, mm in LAYOUTS[target.name]:
        real = None if rootfs else find_cpython(mm)
        if real is not None:
            out.append((rel, str(shareable(real)), f"CPython {mm} ({real})"))
        elif mm == "3.6":
            out.append((rel, "stand-in-3.6", "a stand-in that reports 3.6.9 and runs nothing"))
        else:
            host = "/usr/bin/python3" if rootfs else (shutil.which("python3") or "/usr/bin/python3")
            out.append((rel, host, f"stand-in: {'the rootfs' if rootfs else 'this machine'}'s python3 (no CPython {mm})"))
    return out


def build_overlay(sysroot: Path, target: Target, rootfs: Path | None) -> list[tuple[str, str, str]]:
    """Write the board's /usr overlay (Pythons, npu-smi); returns ``interpreters()``."""
    layout = interpreters(target, rootfs)
    for rel, dest, _ in layout:
        path = sysroot / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        if dest == "stand-in-3.6":
            path.write_text(STAND_IN_36)
            os.chmod(path, 0o755)
        else:
            os.symlink(dest, path)
    smi = sysroot / "usr" / "local" / "bin" / "npu-smi"
    smi.parent.mkdir(parents=True, exist_ok=True)
    text = (ASCEND / "bin" / "npu-smi").read_text()
    smi.write_text(text.replace("${ACL_SIM_SOC_VERSION:-Ascend310}", f"${{ACL_SIM_SOC_VERSION:-{target.soc_version}}}"))
    os.chmod(smi, 0o755)
    for d in [sysroot, *sysroot.rglob("*")]:
        if d.is_dir():
            os.chmod(d, 0o755)
    return layout


def board_path(sysroot_on_board: str) -> str:
    """The board's PATH: its /usr overlay first, then the usual Ubuntu directories."""
    own = [f"{sysroot_on_board}/usr/local/bin", f"{sysroot_on_board}/usr/bin"]
    return ":".join([*own, "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])


def install_cann(home: Path, target: Target, python: str, arch: str, interpreter: str | None = None,
                 rootfs: Path | None = None) -> None:
    """~/Ascend/nnrt: set_env.sh and the simulated pyACL, with ONNX Runtime for CPython ``python`` on ``arch``;
    with ``interpreter`` (that CPython, as atlas.interpreters links it; inside ``rootfs`` for an emulated
    board) also the simulated AscendCL C library (``capi.py``) under runtime/include and runtime/lib64."""
    from ..release import wheelhouse
    from ..targets import platforms_for
    from . import capi

    nnrt = home / "Ascend" / "nnrt"
    if nnrt.exists():
        shutil.rmtree(nnrt)
    shutil.copytree(ASCEND / "runtime", nnrt / "runtime", ignore=shutil.ignore_patterns("__pycache__", ".ruff_cache",
                                                                                        "ruff.toml"))
    cpu = replace(target, backend="onnx", arch=arch, platforms=platforms_for(arch))
    try:
        site = wheelhouse.site_for(cpu, python)
    except Exception as exc:  # BuildError: no network and no cache
        raise SandboxError(f"simulated CANN needs ONNX Runtime for Python {python} ({arch}): {exc}") from None
    shutil.copytree(site, nnrt / "sim-deps", copy_function=link_or_copy)
    if interpreter is not None:
        capi.install(nnrt, arch, interpreter, rootfs)
    env = (ASCEND / "set_env.sh").read_text()
    env += f'export ACL_SIM_SOC_VERSION="${{ACL_SIM_SOC_VERSION:-{target.soc_version}}}"\n'
    env += 'export PYTHONPATH="${PYTHONPATH:+${PYTHONPATH}:}$HOME/Ascend/nnrt/sim-deps"\n'
    (nnrt / "set_env.sh").write_text(env)
    for d in [home / "Ascend", nnrt, *nnrt.rglob("*")]:
        if d.is_dir():
            os.chmod(d, 0o755)


def interpreter_version(link: str, rootfs: Path | None) -> str:
    """major.minor of the interpreter an overlay link points at (asked in the rootfs for an emulated board)."""
    if rootfs is not None:
        m = re.search(r"python(\d+\.\d+)$", os.path.realpath(str(rootfs) + link))
        if m:
            return m.group(1)
    r = subprocess.run([link, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise SandboxError(f"cannot run {link}: {(r.stderr or r.stdout).strip()[:200]}")
    return r.stdout.strip()
