"""An MLU370-shaped sandbox board: what a sandbox board with a Cambricon target gets on top of a plain one.

``deploy sandbox up mlu-sim`` for ``{sandbox: true, target: mlu370}`` gives the board what Cambricon's
``magicmind:1.7.0-x86_64-ubuntu18.04-py_3_7`` container on an MLU370 host has:

* Python 3.7 as ``python3.7`` in a per-board overlay of ``/usr`` first on the board's ``PATH``
  (sshd ``SetEnv PATH=``): the machine's real CPython 3.7 where it has one, else its own python3,
  which the board's facts then report (releases are built for the version that really runs);
* ``cnmon`` in that overlay's ``usr/bin`` (the container mounts the host's ``/usr/bin/cnmon``):
  the CNMON v4.20 table with ``MM_SIM_DEVICES`` MLU370-X4 cards;
* ``NEUWARE_HOME`` (sshd ``SetEnv``) at ``~/neuware``: its ``env.sh`` puts the simulated
  ``magicmind.python.runtime`` (``cambricon/runtime``) and ONNX Runtime for the board's Python
  (``sim-deps``, last) on PYTHONPATH, so ``import magicmind`` works once the app's env.sh (which
  sources ``$NEUWARE_HOME/env.sh``, see deploy/envblock.py) has run.

The login user is the board's own (Cambricon's images log in as root; nothing asks for a named user).
Nothing here ships to a real board: it is the board, not the release.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

from ..errors import SandboxError
from ..targets import Target
from . import atlas
from .host import link_or_copy

CAMBRICON = Path(__file__).parent / "cambricon"


def is_mlu(target: Target) -> bool:
    """A Cambricon target the agent runs on (CE3226 edge boards are refused before any board exists)."""
    return target.backend == "magicmind" and not target.refuses


def build_overlay(sysroot: Path, rootfs: Path | None) -> list[tuple[str, str, str]]:
    """The board's /usr overlay: python3.7 and cnmon. Returns [(overlay path, link target, what it is)]."""
    real = None if rootfs else atlas.find_cpython("3.7")
    if real is not None:
        layout = [("usr/bin/python3.7", str(atlas.shareable(real)), f"CPython 3.7 ({real})")]
    else:
        host = "/usr/bin/python3" if rootfs else (shutil.which("python3") or "/usr/bin/python3")
        where = "the rootfs" if rootfs else "this machine"
        layout = [("usr/bin/python3.7", host, f"stand-in: {where}'s python3 (no CPython 3.7)")]
    for rel, dest, _ in layout:
        path = sysroot / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        os.symlink(dest, path)
    cnmon = sysroot / "usr" / "bin" / "cnmon"
    shutil.copyfile(CAMBRICON / "bin" / "cnmon", cnmon)
    os.chmod(cnmon, 0o755)
    for d in [sysroot, *sysroot.rglob("*")]:
        if d.is_dir():
            os.chmod(d, 0o755)
    return [*layout, ("usr/bin/cnmon", "", "the CNMON v4.20 table (simulated)")]


def install_neuware(home: Path, target: Target, python: str, arch: str) -> Path:
    """~/neuware: env.sh, the simulated MagicMind runtime, ONNX Runtime for CPython ``python`` on ``arch``."""
    from ..release import wheelhouse
    from ..targets import platforms_for

    neuware = home / "neuware"
    if neuware.exists():
        shutil.rmtree(neuware)
    shutil.copytree(CAMBRICON / "runtime", neuware / "runtime",
                    ignore=shutil.ignore_patterns("__pycache__", ".ruff_cache", "ruff.toml"))  # fmt: skip
    cpu = replace(target, backend="onnx", arch=arch, platforms=platforms_for(arch), refuses="")
    try:
        site = wheelhouse.site_for(cpu, python)
    except Exception as exc:  # BuildError: no network and no cache
        raise SandboxError(
            f"simulated MagicMind needs ONNX Runtime for Python {python} ({arch}): {exc}"
        ) from None
    shutil.copytree(site, neuware / "sim-deps", copy_function=link_or_copy)
    env = (CAMBRICON / "env.sh").read_text().replace("mtp_372", target.mm_arch or "mtp_372")
    (neuware / "env.sh").write_text(env)
    for d in [neuware, *neuware.rglob("*")]:
        if d.is_dir():
            os.chmod(d, 0o755)
    return neuware


def shape(board, target: Target, login, rootfs: Path | None, log) -> tuple[object, list[str]]:
    """Give the board an MLU370 host's Python 3.7, cnmon and Neuware; returns the login with its env."""
    sys_on_host = login.home_on_host.parent / "sys"
    sys_on_board = str(Path(login.home).parent / "sys")
    layout = build_overlay(sys_on_host, rootfs)
    mm = atlas.interpreter_version(layout[0][1], rootfs)
    if log:
        log(f"{board.name}: simulated MagicMind for Python {mm} ({board.arch})")
    install_neuware(login.home_on_host, target, mm, board.arch)
    env = (*login.env, ("PATH", atlas.board_path(sys_on_board)), ("NEUWARE_HOME", f"{login.home}/neuware"))
    return replace(login, env=env), [f"/{rel}: {what}" for rel, _, what in layout]
