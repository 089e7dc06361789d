"""A C/C++ app built on the host for each board's target (``app.build``; seed 000's cross-compile).

What users do by hand today (``export DDK_PATH=...; export NPU_HOST_LIB=$DDK_PATH/runtime/lib64/stub;
cmake ../../../src -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ -DCMAKE_SKIP_RPATH=TRUE; make``), done for
them: the app's tree (after include/exclude) is copied into a staging folder per target and build key,
CMake runs there with the target's :class:`Toolchain` (Debian's cross compilers and the board's libraries
as the sysroot, or the host's own compilers for an x86_64 board), ``DDK_PATH``/``NPU_HOST_LIB`` set as the
samples expect, and ``-DCMAKE_SKIP_RPATH=TRUE``; the build folder is Huawei's ``build/intermediates/host``,
so a CMakeLists.txt that writes ``../../../out`` puts its program where the samples keep it.

A build is cached by the digests of the tree, the build settings and the toolchain's identity: a second
push of an unchanged tree runs no CMake. Every artifact is checked before anything is sent: an ELF for the
board's architecture, and every ``NEEDED`` library found on the board (its libraries as the toolchain knows
them, its CANN's) or in the app's tree. Each failure is one line: the compiler's first error lines, the
wrong architecture, the missing library, the missing toolchain (naming the Debian package).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BuildError
from ..inventory.own import OwnApp
from . import apptree
from .hashcache import HashCache

BUILD_FORMAT = 1
ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x28: "arm", 0x03: "x86"}
ACL_INCLUDES = (b"acl/acl.h", b"acl/acl_base.h", b"acl/acl_mdl.h", b"acl/acl_rt.h")


@dataclass(frozen=True)
class Toolchain:
    """How to build for one kind of board: the compilers (a CMake toolchain file, or the host's own), the
    DDK the samples build against, and where the board's libraries are for the NEEDED check."""

    arch: str
    cmake_toolchain: Path | None = None  # None: the host's compilers (an x86_64 board from an x86_64 host)
    ddk: Path | None = None  # DDK_PATH: its runtime/include and runtime/lib64/stub
    library_dirs: tuple[Path, ...] = ()  # the board's library folders (as the host sees them)
    board_libs: tuple[str, ...] = ()  # libraries the board has outside library_dirs (its CANN's)
    identity: str = ""  # compiler versions, sysroot and DDK: what else a cached build depends on
    describe: str = ""  # one line for `deploy build`: which compilers, which sysroot


@dataclass(frozen=True)
class Built:
    root: Path  # the staged tree: the app's files and what the build left
    files: list[tuple[str, Path]] = field(default_factory=list)  # (release path, local file)
    artifacts: tuple[str, ...] = ()
    cached: bool = False
    seconds: float = 0.0


def needs_ddk(files: list[tuple[str, Path]]) -> bool:
    """Whether the app's sources include AscendCL's headers (then it cannot build without a DDK)."""
    for _, src in files:
        if src.suffix in (".c", ".cc", ".cpp", ".cxx", ".h", ".hpp") and any(i in src.read_bytes() for i in ACL_INCLUDES):
            return True
    return False


def build(own: OwnApp, tc: Toolchain, cache: HashCache, state_dir: Path, board: str = "",
          progress=None) -> Built:
    """The app built for ``tc`` (cached); BuildError (one line, naming ``board``) when it cannot be."""
    spec = own.build
    files = apptree.tree_files(own)
    if tc.ddk is None and needs_ddk(files):
        raise BuildError(f"{board}: the app includes acl/acl.h but there is no Ascend DDK to build against: set "
                         f"boards.{board}.ddk (or DDK_PATH) to the CANN toolkit's {_ddk_folder(tc.arch)} folder "
                         "(install Ascend-cann-toolkit on this host)")
    key = hashlib.sha256(json.dumps([BUILD_FORMAT, [(rel, cache.digest(src, src.stat())) for rel, src in files],
                                     [spec.cmake, spec.dir, list(spec.artifacts)], tc.arch, tc.identity,
                                     str(tc.ddk or "")]).encode()).hexdigest()
    cache.save()
    stage = state_dir / "builds" / f"{own.source.name}-{tc.arch}-{key[:16]}"
    if (stage / ".built.json").is_file():
        return _result(stage, own, files, cached=True)
    stage.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stage.name}.", dir=stage.parent))
    t0 = time.perf_counter()
    try:
        for rel, src in files:
            dst = tmp / rel.split("/", 1)[1]
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            os.chmod(dst, (src.stat().st_mode & 0o777) | 0o200)  # the build may write beside the sources
        _cmake(tmp, own, tc, board, progress)
        check_artifacts(tmp, own, tc, board)
        (tmp / ".built.json").write_text(json.dumps({"artifacts": list(spec.artifacts), "arch": tc.arch,
                                                     "seconds": round(time.perf_counter() - t0, 3)}))
        if stage.exists():
            shutil.rmtree(stage)
        os.replace(tmp, stage)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _result(stage, own, files, cached=False, seconds=time.perf_counter() - t0)


def _ddk_folder(arch: str) -> str:
    return "arm64-linux" if arch == "aarch64" else f"{arch}-linux"


def _result(stage: Path, own: OwnApp, files, *, cached: bool, seconds: float = 0.0) -> Built:
    """The release's files: the tree's own (their local sources) and the artifacts from the staging tree."""
    arts = own.build.artifacts
    out = [(rel, src) for rel, src in files if rel.split("/", 1)[1] not in arts]
    out += [(f"{apptree.PREFIX}/{a}", stage / a) for a in arts]
    return Built(root=stage, files=sorted(out), artifacts=arts, cached=cached, seconds=seconds)


def _cmake(tree: Path, own: OwnApp, tc: Toolchain, board: str, progress) -> None:
    """Configure and build with CMake in Huawei's layout; BuildError with the first error lines."""
    spec = own.build
    cmake = shutil.which("cmake")
    if cmake is None:
        raise BuildError(f"{board}: building the app needs CMake: apt-get install cmake")
    build_dir = tree / spec.dir
    build_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if tc.ddk is not None:
        env.update(DDK_PATH=str(tc.ddk), NPU_HOST_LIB=str(tc.ddk / "runtime" / "lib64" / "stub"))
    configure = [cmake, "-S", str(tree / spec.cmake), "-B", str(build_dir), "-DCMAKE_SKIP_RPATH=TRUE",
                 "-DCMAKE_BUILD_TYPE=Release"]
    if tc.cmake_toolchain is not None:
        configure.append(f"-DCMAKE_TOOLCHAIN_FILE={tc.cmake_toolchain}")
    for step, argv in (("cmake", configure), ("make", [cmake, "--build", str(build_dir), "-j", str(os.cpu_count() or 2)])):
        r = subprocess.run(argv, cwd=build_dir, env=env, capture_output=True, text=True)
        if progress is not None:
            for line in (r.stdout + r.stderr).splitlines():
                progress(line)
        if r.returncode != 0:
            raise BuildError(f"{board}: the {step} step failed: {first_errors(r.stdout + r.stderr)}")


def first_errors(output: str, n: int = 3) -> str:
    """The compiler's (or CMake's) first error lines, joined: what a user reads first in a failed build."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() and not ln.startswith(("make", "gmake", "--"))]
    picked = errors[:n] or lines[-n:]
    return " | ".join(ln[:240] for ln in picked) or "no output"


def check_artifacts(tree: Path, own: OwnApp, tc: Toolchain, board: str) -> None:
    """Each artifact: there, an ELF for the board's arch, every NEEDED library on the board or in the tree."""
    have = {p.name for d in tc.library_dirs if d.is_dir() for p in d.iterdir()} | set(tc.board_libs)
    build_dir = (tree / own.build.dir).resolve()  # what stays here: the build folder does not travel
    have |= {p.name for p in tree.rglob("*.so*") if p.is_file() and build_dir not in p.resolve().parents}
    for rel in own.build.artifacts:
        path = tree / rel
        if not path.is_file():
            raise BuildError(f"{board}: the build left no {rel} (app.build.artifacts); check the CMakeLists.txt's "
                             "output folder")
        arch = elf_arch(path)
        if arch != tc.arch:
            raise BuildError(f"{board}: {rel} is {'not an ELF file' if arch is None else f'built for {arch}'}, "
                             f"the board is {tc.arch}")
        missing = [lib for lib in needed(path) if lib not in have]
        if missing:
            raise BuildError(f"{board}: {rel} needs {', '.join(missing)}, which the board does not have "
                             "(not in its libraries nor in the app's tree)")


def elf_arch(path: Path) -> str | None:
    """The machine an ELF file is built for ("aarch64", "x86_64"), or None when it is no ELF."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order = "little" if head[5] == 1 else "big"
    return ELF_MACHINES.get(int.from_bytes(head[18:20], order), f"machine {int.from_bytes(head[18:20], order)}")


def needed(path: Path) -> list[str]:
    """The NEEDED entries of an ELF file's dynamic section (``readelf -d``)."""
    r = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"readelf cannot read {path}: {r.stderr.strip()[:200]} (apt-get install binutils)")
    return [ln.split("[", 1)[1].split("]", 1)[0] for ln in r.stdout.splitlines() if "(NEEDED)" in ln]
