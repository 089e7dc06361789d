"""The simulated AscendCL C library of a simulated Atlas board: built here, installed into its CANN.

The sources are ``ascend/capi/`` (headers written from the documented API, the library in C);
``build(arch)`` compiles them with gcc for x86_64, or with Debian's ``aarch64-linux-gnu-gcc``
against the emulated board's rootfs for aarch64 (the board's glibc, so the library runs there), and
caches the result by the digest of the sources, the compiler and the flags. What a build holds is
what CANN lays out under ``runtime/``::

    include/acl/acl.h acl_base.h acl_rt.h acl_mdl.h error_codes/rt_error_codes.h
    lib64/libascendcl.so          the run-time library (links against nothing but libc, libdl, libpthread)
    lib64/stub/libascendcl.so     every declared symbol, no behaviour: what apps link against

``install(nnrt, arch, python, rootfs)`` copies it into a board's ``~/Ascend/nnrt/runtime/`` and
writes ``lib64/acl-sim.conf``: which Python the library embeds to run models (see
``ascend/README.md``). Nothing here is shipped to a real board.
"""

from __future__ import annotations

import glob
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import SandboxError
from . import sysroot

SOURCE = Path(__file__).parent / "ascend" / "capi"
CFLAGS = ["-std=gnu11", "-O2", "-g", "-fPIC", "-fvisibility=hidden", "-pthread", "-Wall", "-Wextra",
          "-Wno-unused-parameter", "-Wno-unused-const-variable", "-Wno-missing-field-initializers", "-Wno-format-truncation"]
LDFLAGS = ["-shared", "-Wl,-soname,libascendcl.so", "-Wl,--no-undefined", "-pthread", "-ldl"]
CROSS = {"aarch64": ("aarch64-linux-gnu-gcc", "g++-aarch64-linux-gnu"), "x86_64": ("x86_64-linux-gnu-gcc", "g++-x86-64-linux-gnu")}
_DECL = re.compile(r"^ACL_FUNC_VISIBILITY\s+(?P<ret>.+?)\s*\b(?P<name>\w+)\((?P<params>.*)\);$")


def cache_root() -> Path:
    env = os.environ.get("DEPLOY_CAPI_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "atlas-deploy" / "capi"


def compiler(arch: str) -> tuple[str, str]:
    """(the C compiler for ``arch``, the Debian package that brings it); SandboxError when missing."""
    native = platform.machine() in (arch, {"aarch64": "arm64"}.get(arch))
    cc, package = ("gcc", "gcc") if native else CROSS.get(arch, (None, None))
    if cc is None:
        raise SandboxError(f"no C compiler known for {arch} boards")
    if not shutil.which(cc):
        raise SandboxError(f"the simulated AscendCL library for {arch} needs {cc}: apt-get install {package}")
    return cc, package


def _digest(cc: str, flags: list[str]) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in SOURCE.rglob("*") if p.is_file() and p.suffix in (".c", ".h")):
        h.update(str(path.relative_to(SOURCE)).encode() + b"\0" + path.read_bytes() + b"\0")
    version = subprocess.run([cc, "-dumpfullversion", "-dumpversion"], capture_output=True, text=True).stdout
    h.update(" ".join([cc, version.strip(), *flags]).encode())
    return h.hexdigest()[:16]


def build(arch: str, rootfs: Path | None = None) -> Path:
    """A built library for ``arch`` boards (cached): the folder holding include/ and lib64/. For aarch64
    on an x86_64 host ``rootfs`` is the emulated board's, the sysroot."""
    cc, _ = compiler(arch)
    if rootfs is None and cc != "gcc":
        raise SandboxError(f"the {arch} simulated AscendCL library is built against the emulated board's rootfs: none given")
    flags = sysroot.flags(rootfs) if cc != "gcc" else []
    out = cache_root() / f"{arch}-{_digest(cc, flags)}"
    if (out / "lib64" / "libascendcl.so").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(SOURCE / "include", tmp / "include")
        (tmp / "lib64" / "stub").mkdir(parents=True)
        srcs = sorted(str(p) for p in (SOURCE / "src").glob("*.c"))
        _compile([cc, *CFLAGS, *flags, "-I", str(SOURCE / "include"), *srcs, "-o", str(tmp / "lib64" / "libascendcl.so"), *LDFLAGS])
        stub = tmp / "stub.c"
        stub.write_text(stub_source())
        _compile([cc, *CFLAGS, *flags, "-I", str(SOURCE / "include"), str(stub), "-o", str(tmp / "lib64" / "stub" / "libascendcl.so"),
                  "-shared", "-Wl,-soname,libascendcl.so"])  # fmt: skip
        stub.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "lib64" / "libascendcl.so").is_file():
            raise
    return out


def _compile(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        lines = [ln for ln in (r.stderr or r.stdout).splitlines() if "error" in ln] or (r.stderr or r.stdout).splitlines()
        raise SandboxError(f"building the simulated AscendCL library failed: {' | '.join(lines[:3])[:400]}")


def declarations() -> list[tuple[str, str, str]]:
    """(return type, name, parameters) of every function the headers declare."""
    found = []
    for header in sorted((SOURCE / "include" / "acl").glob("*.h")):
        for line in header.read_text().splitlines():
            m = _DECL.match(line.strip())
            if m:
                found.append((m["ret"], m["name"], m["params"]))
    return found


def stub_source() -> str:
    """The link-time stub: each declared function, doing nothing (as CANN's runtime/lib64/stub)."""
    lines = ['/* Generated from the simulated AscendCL headers: symbols only, for linking. */', '#include "acl/acl.h"', ""]
    for ret, name, params in declarations():
        body = "" if ret == "void" else " return 0; "
        lines.append(f"ACL_FUNC_VISIBILITY {ret} {name}({params}) {{{body}}}")
    return "\n".join(lines) + "\n"


def board_python(link: str, rootfs: Path | None) -> tuple[str, str | None]:
    """(the board's CANN interpreter, its shared libpython or None), as the board sees them. ``link`` is
    the interpreter at the CANN Python's place (atlas.interpreters); inside ``rootfs`` for an emulated board."""
    real = Path(os.path.realpath(str(rootfs) + link if rootfs else link))
    version = re.search(r"python(\d+\.\d+)", real.name)
    mm = version.group(1) if version else ""
    prefix = real.parents[1]
    found = sorted(glob.glob(str(prefix / "lib" / f"libpython{mm}*.so.1.0")))
    found += sorted(glob.glob(str(prefix / "lib" / "*-linux-gnu" / f"libpython{mm}*.so.1.0")))
    inside = (lambda p: "/" + str(Path(p).relative_to(rootfs))) if rootfs else str
    return inside(real), (inside(found[0]) if found else None)


def install(nnrt: Path, arch: str, python_link: str, rootfs: Path | None = None) -> None:
    """Headers, run-time library and stub into ``nnrt/runtime/``, and ``acl-sim.conf`` naming the board's Python."""
    built = build(arch, rootfs)
    runtime = nnrt / "runtime"
    shutil.copytree(built / "include", runtime / "include", dirs_exist_ok=True)
    shutil.copytree(built / "lib64", runtime / "lib64", dirs_exist_ok=True)
    python, libpython = board_python(python_link, rootfs)
    conf = f"python={python}\n" + (f"libpython={libpython}\n" if libpython else "")
    (runtime / "lib64" / "acl-sim.conf").write_text(
        "# Which Python the simulated libascendcl.so embeds to run models (atlas-deploy sandbox board)\n" + conf
    )
