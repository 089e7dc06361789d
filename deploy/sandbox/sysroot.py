"""The emulated board's rootfs as the aarch64 cross-compilers' sysroot.

Debian's ``aarch64-linux-gnu-gcc/g++`` (bookworm: gcc 12, glibc 2.36, libstdc++ 6.0.30) search their
own headers and libraries before any ``--sysroot``, so what they build asks for symbol versions the
board (bullseye: glibc 2.31, libstdc++ 6.0.28) lacks: ``pthread_create@GLIBC_2.34``, or
``__libc_single_threaded`` from a static libstdc++. :func:`flags` puts the board's own headers, crt
files and libraries first instead. The rootfs carries what that needs (:data:`PACKAGES`, installed by
``emulation.ensure_rootfs``) and relative library links (:func:`relative_links`).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

TRIPLET = "aarch64-linux-gnu"
# libpython3.9: the simulated AscendCL C library embeds the board's Python (sandbox/capi.py);
# libc6-dev, libstdc++-10-dev: the board's headers, crt files and link-time names of its C and C++ libraries.
PACKAGES = ("libpython3.9", "libc6-dev", "libstdc++-10-dev")


def relative_links(root: Path) -> None:
    """Make the absolute symlinks of the library folders relative (``libdl.so -> /lib/...`` as
    ``../../../lib/...``): the same inside the rootfs, and a linker on the host using it as its sysroot
    finds the board's library instead of a dangling link (and silently takes the static archive)."""
    for folder in [root / "usr" / "lib" / TRIPLET, *(root / "usr" / "lib" / "gcc").glob("*/*")]:
        for link in (p for p in folder.glob("*") if p.is_symlink() and os.readlink(p).startswith("/")):
            target = root / os.readlink(link).lstrip("/")
            link.unlink()
            link.symlink_to(os.path.relpath(target, link.parent))


def flags(rootfs: Path, cxx: bool = False) -> list[str]:
    """gcc/g++ flags that build against the board in ``rootfs``: its headers (and libstdc++'s, for C++),
    its crt files, its libraries at link time."""
    r = Path(rootfs)
    out = [f"--sysroot={r}"]
    if cxx:
        found = sorted(glob.glob(str(r / "usr/include/c++/*")))
        if found:
            ver = Path(found[-1]).name
            out += ["-nostdinc++", "-isystem", f"{r}/usr/include/c++/{ver}", "-isystem",
                    f"{r}/usr/include/{TRIPLET}/c++/{ver}", "-isystem", f"{r}/usr/include/c++/{ver}/backward",
                    "-L", f"{r}/usr/lib/gcc/{TRIPLET}/{ver}"]  # fmt: skip
    out += ["-isystem", f"{r}/usr/include/{TRIPLET}", "-isystem", f"{r}/usr/include", "-B", f"{r}/usr/lib/{TRIPLET}/",
            "-L", f"{r}/usr/lib/{TRIPLET}", "-L", f"{r}/lib/{TRIPLET}",
            f"-Wl,-rpath-link,{r}/lib/{TRIPLET}:{r}/usr/lib/{TRIPLET}"]  # fmt: skip
    return out


def cmake_toolchain(rootfs: Path, dest: Path) -> Path:
    """A CMake toolchain file for ``aarch64-linux-gnu-gcc/g++`` with :func:`flags` (what a cross build of a
    C++ app for the emulated board passes as -DCMAKE_TOOLCHAIN_FILE)."""
    c, cxx = " ".join(flags(rootfs)), " ".join(flags(rootfs, cxx=True))
    dest.write_text(
        "# aarch64 cross build against the emulated board's rootfs (atlas-deploy sandbox/sysroot.py)\n"
        "set(CMAKE_SYSTEM_NAME Linux)\nset(CMAKE_SYSTEM_PROCESSOR aarch64)\n"
        f"set(CMAKE_C_COMPILER {TRIPLET}-gcc)\nset(CMAKE_CXX_COMPILER {TRIPLET}-g++)\n"
        f'set(CMAKE_SYSROOT "{rootfs}")\n'
        f'set(CMAKE_C_FLAGS_INIT "{c}")\nset(CMAKE_CXX_FLAGS_INIT "{cxx}")\n'
        "set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)\nset(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)\n"
        "set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)\n"
    )
    return dest
