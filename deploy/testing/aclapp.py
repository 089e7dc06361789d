"""C/C++ apps against the simulated AscendCL library, as a user of a simulated Atlas board runs them.

What the tests of ``deploy/sandbox/capi.py`` and ``benchmarks/clib.py`` share: a simulated CANN
installed into a folder (:func:`install_cann`, the same ``atlas.install_cann`` a sandbox board gets),
simulated models of the demo network (:func:`convert`), the demo photos preprocessed into ``.bin``
files (:func:`photo_bin`), a C++ app built the way Ascend's C++ samples are (:func:`build_app`:
CMake with ``DDK_PATH``/``NPU_HOST_LIB`` and ``-DCMAKE_SKIP_RPATH=TRUE``, the executable in
``out/``) and run from ``out/`` with the CANN environment sourced (:func:`run_app`), natively or
inside the emulated aarch64 rootfs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from deploy.sandbox import atlas, emulation, sysroot
from deploy.targets import get as get_target

from . import DEMO, REPO

TARGET = "atlas200dk"


def install_cann(home: Path, arch: str = "x86_64", rootfs: Path | None = None) -> Path:
    """``home/Ascend/nnrt`` as a simulated Atlas board of ``arch`` has it (pyACL, sim-deps and the C
    library); x86_64 needs a shared CPython 3.7 (the DK's CANN Python), aarch64 the emulated rootfs
    (``home`` inside it). Returns the nnrt folder; RuntimeError when there is no CPython 3.7."""
    if arch == "aarch64":
        atlas.install_cann(home, get_target(TARGET), "3.9", "aarch64", "/usr/bin/python3", rootfs)
    else:
        python = atlas.find_cpython("3.7")
        if python is None:
            raise RuntimeError("no CPython 3.7 on this machine (the simulated DK's CANN Python)")
        atlas.install_cann(home, get_target(TARGET), "3.7", "x86_64", str(python))
    return home / "Ascend" / "nnrt"


def convert(out: Path, aipp: bool = False, fp16_input: bool = False, onnx_path: Path | None = None) -> Path:
    """The demo EfficientNet-Lite0 (or ``onnx_path``) as a simulated .om at ``out`` (``deploy model convert --simulate``)."""
    onnx_path = onnx_path or DEMO / "models" / "efficientnet_lite0.onnx"
    argv = [sys.executable, "-m", "deploy", "model", "convert", str(onnx_path), "--target", TARGET, "--simulate",
            "-o", str(out)]  # fmt: skip
    argv += ["--aipp", "app"] if aipp else []
    argv += ["--fp16-input", "input"] if fp16_input else []
    r = subprocess.run(argv, capture_output=True, text=True, cwd=str(REPO))
    if r.returncode != 0:
        raise RuntimeError(f"convert failed: {(r.stderr or r.stdout).strip()[-400:]}")
    return out


def photo_bin(photo: str, dest: Path, kind: str = "float") -> Path:
    """The demo photo as the model input, raw: resize the short side to 256, centre crop 224, RGB;
    ``float`` NCHW (x - 127) / 128 float32, ``fp16`` the same as float16, ``uint8`` NHWC pixels (AIPP)."""
    from PIL import Image

    img = Image.open(DEMO / "images" / photo).convert("RGB")
    scale = 256 / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
    left, top = (img.width - 224) // 2, (img.height - 224) // 2
    pixels = np.asarray(img.crop((left, top, left + 224, top + 224)))
    if kind == "uint8":
        data = np.ascontiguousarray(pixels[None])
    else:
        x = ((pixels.astype(np.float32) - 127.0) / 128.0).transpose(2, 0, 1)[None]
        data = np.ascontiguousarray(x, dtype=np.float16 if kind == "fp16" else np.float32)
    dest.parent.mkdir(parents=True, exist_ok=True)
    data.tofile(dest)
    return dest


def build_app(app: Path, nnrt: Path, rootfs: Path | None = None, src: str = "src") -> Path:
    """cmake + make the app's ``src/CMakeLists.txt`` in ``build/intermediates/host`` as the samples say
    (g++, or aarch64-linux-gnu-g++ against ``rootfs``); returns the built ``out/main``."""
    build = app / "build" / "intermediates" / "host"
    build.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DDK_PATH": str(nnrt), "NPU_HOST_LIB": str(nnrt / "runtime" / "lib64" / "stub")}
    argv = ["cmake", f"../../../{src}", "-DCMAKE_SKIP_RPATH=TRUE"]
    if rootfs is None:
        argv.append("-DCMAKE_CXX_COMPILER=g++")
    else:
        toolchain = sysroot.cmake_toolchain(rootfs, app / "build" / "aarch64.cmake")
        argv += [f"-DCMAKE_TOOLCHAIN_FILE={toolchain}", "-DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++"]
    for step in (argv, ["make", "-j2"]):
        r = subprocess.run(step, cwd=str(build), env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{step[0]} failed: {(r.stderr or r.stdout).strip()[-1500:]}")
    return app / "out" / "main"


def run_app(app: Path, nnrt: Path, args: list[str], env: dict | None = None, rootfs: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """``./main ARGS`` from ``app/out`` after sourcing ``nnrt/set_env.sh`` (paths inside ``rootfs`` when given)."""
    inside = (lambda p: "/" + str(Path(p).relative_to(rootfs))) if rootfs else str
    exports = " ".join(f"{k}={v}" for k, v in (env or {}).items())
    script = f". {inside(nnrt)}/set_env.sh && cd {inside(app)}/out && {exports} ./main {' '.join(args)}"
    if rootfs is not None:
        return emulation.chroot_run(rootfs, ["/bin/bash", "-c", script], timeout=timeout)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ACL_SIM_") and k not in ("PYTHONPATH", "LD_LIBRARY_PATH")}
    return subprocess.run(["bash", "-c", script], env=clean, capture_output=True, text=True, timeout=timeout)


def answers(stdout: str) -> list[tuple[str, int, str, int]]:
    """(mode, execution, file, top-1 class) of each ``<mode> <n> <file> top1 <index> <value>`` line."""
    out = []
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[3] == "top1":
            out.append((parts[0], int(parts[1]), parts[2], int(parts[4])))
    return out


def copy_app(dest: Path) -> Path:
    """A fresh copy of the test app (``tests/capi_app``) at ``dest``."""
    shutil.copytree(REPO / "tests" / "capi_app", dest)
    return dest
