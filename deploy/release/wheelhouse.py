"""Cross-built dependency trees (``site/``) for a target's platform and Python.

The board has no internet, so every dependency of the agent travels in the release:
binary wheels are downloaded for the *target's* platform and Python (``pip download
--only-binary=:all: --platform ... --python-version ...``), cached on the host, and
unpacked into one directory that goes into the release as ``site/`` and onto
``PYTHONPATH``. Wheels are zips and the agent's dependencies need no install-time
hooks, so unpacking is all an install does.

Cache layout (``~/.cache/atlas-deploy/wheels`` or ``$DEPLOY_WHEEL_CACHE``)::

    <platform>-cp<ver>/wheels/*.whl       what pip downloaded
    <platform>-cp<ver>/site-<hash>/       unpacked tree for one requirement set
    <platform>-cp<ver>/site-<hash>.json   stamp: the wheels it was built from

A second build for the same target reads only the stamp: no pip, no network.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import BuildError
from ..targets import Target, abi_tag

# What the agent and its backend never load at run time, and why; dropped when a wheel is unpacked.
# A pattern is fnmatch'ed against the path inside the wheel ("*" crosses "/"); a "DIR/" pattern drops
# the directory's whole tree. Each entry is decided per package and proven by running the agent from
# the slim tree (both backends, every preset, bench and eval: tests/test_slim_site.py, and every
# integration test, since releases carry this tree). Licences and the .dist-info metadata stay.
PRUNE: tuple[tuple[str, str], ...] = (
    # every package
    ("*/tests/", "test suites"),
    ("*/__pycache__/", "byte code: the board compiles for its own Python"),
    ("*.pyc", "byte code"),
    ("*.pyi", "type stubs"),
    ("*/py.typed", "type-checker marker"),
    ("*.h", "C headers: for building extensions against the package"),
    ("*.hpp", "C++ headers"),
    ("*.pxd", "Cython declarations: for building"),
    ("*.pyx", "Cython sources"),
    ("*.a", "static libraries: for building"),
    ("*/pkgconfig/", "pkg-config files: for building"),
    ("*.data/scripts/", "command-line tools"),
    # numpy (1.21 on the DK's Python 3.7 ... 2.x): `import numpy` loads none of these; f2py, distutils and
    # testing are build or test tools reached only on attribute access
    ("numpy/_core/include/", "C headers"),
    ("numpy/core/include/", "C headers (numpy 1.x)"),
    ("numpy/_core/lib/", "libnpymath.a and npy-pkg-config: for building"),
    ("numpy/core/lib/", "the same, numpy 1.x"),
    ("numpy/random/lib/", "libnpyrandom.a: for building"),
    ("numpy/f2py/", "the Fortran wrapper generator"),
    ("numpy/distutils/", "build tooling"),
    ("numpy/testing/", "numpy's test helpers"),
    ("numpy/_pyinstaller/", "PyInstaller hooks"),
    ("numpy/doc/", "documentation"),
    ("numpy/typing/", "static typing support"),
    ("numpy/conftest.py", "pytest configuration"),
    ("numpy/_core/_simd.*", "the SIMD test module"),
    ("numpy/core/_simd.*", "the SIMD test module (numpy 1.x)"),
    # test extension modules; not _multiarray_tests: numpy 1.x's core/_add_newdocs imports it
    ("numpy/*/_umath_tests.*", "a test extension module"),
    ("numpy/*/_rational_tests.*", "a test extension module"),
    ("numpy/*/_operand_flag_tests.*", "a test extension module"),
    ("numpy/*/_struct_ufunc_tests.*", "a test extension module"),
    # onnxruntime: the Python API is capi/onnxruntime_pybind11_state (ORT linked in: it does not need
    # libonnxruntime.so, whose NEEDED list proves it); the rest are offline model tools
    ("onnxruntime/capi/libonnxruntime.so*", "the C/C++ API library: the Python module has its own copy"),
    ("onnxruntime/transformers/", "transformer model optimisation tools"),
    ("onnxruntime/quantization/", "model quantisation tools"),
    ("onnxruntime/tools/", "model conversion and inspection tools"),
    ("onnxruntime/datasets/", "sample models"),
    # Pillow: formats the agent never opens (agent/images.py IMAGE_EXTENSIONS) and GUI toolkits
    ("PIL/_avif.*", "AVIF codec: the agent takes no .avif"),
    ("pillow.libs/libavif*", "AVIF codec library"),
    ("PIL/_imagingtk.*", "Tk bridge"),
    ("PIL/ImageTk.py", "Tk bridge"),
    ("PIL/ImageQt.py", "Qt bridge"),
)
# bump when PRUNE changes: cached trees were built with the old rules
_PRUNE_VERSION = 3
_PRUNE_RE = re.compile("|".join(  # matched against "/" + the member's path, so "numpy/..." is anchored
    fnmatch.translate(("" if pat.startswith("*") else "/") + pat + ("*" if pat.endswith("/") else ""))
    for pat, _ in PRUNE
))


def pruned(name: str) -> bool:
    """Whether the wheel member ``name`` stays out of ``site/`` (see PRUNE)."""
    return _PRUNE_RE.match("/" + name) is not None


def cache_root() -> Path:
    env = os.environ.get("DEPLOY_WHEEL_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "atlas-deploy" / "wheels"


def site_dir(target: Target, python: str, cache: Path | None = None) -> Path:
    """Where the tree for ``target`` on CPython ``python`` lives in the cache (its stamp: the same + ``.json``).
    The name covers the requirements, the platforms and the PRUNE rules the tree was unpacked with."""
    reqs = sorted(target.requirements)
    digest = hashlib.sha256(json.dumps([reqs, list(target.platforms), _PRUNE_VERSION]).encode()).hexdigest()[:12]
    return (cache or cache_root()) / f"{target.platforms[0]}-{abi_tag(python)}" / f"site-{digest}"


def site_for(target: Target, python: str, *, cache: Path | None = None, offline: bool = False) -> Path:
    """Return an unpacked dependency tree for ``target`` on CPython ``python`` ("3.11"), building it once."""
    site = site_dir(target, python, cache)
    base = site.parent
    reqs = sorted(target.requirements)
    stamp = site.with_name(site.name + ".json")
    if site.is_dir() and stamp.is_file():
        return site
    wheels = _download(target, python, reqs, base / "wheels", offline=offline)
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".site-", dir=base))
    try:
        for whl in wheels:
            _unpack(whl, tmp)
        if site.exists():
            shutil.rmtree(site)
        os.replace(tmp, site)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    stamp.write_text(json.dumps({"python": python, "platforms": target.platforms, "wheels": [w.name for w in wheels]}, indent=1))
    return site


def _pip_download(target: Target, python: str, dest: Path, deps: bool = False) -> list[str]:
    """``pip download`` of binary wheels for the target's platforms and Python into ``dest``."""
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--disable-pip-version-check"]
    cmd += [] if deps else ["--no-deps"]
    for plat in target.platforms:
        cmd += ["--platform", plat]
    cmd += ["--python-version", python, "--implementation", "cp", "--abi", abi_tag(python), "--abi", "abi3", "--abi", "none"]
    return cmd + ["-d", str(dest)]


def _download(target: Target, python: str, reqs: list[str], dest: Path, *, offline: bool) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    base_cmd = _pip_download(target, python, dest)
    found: list[Path] = []
    for req in reqs:
        # cached first: a second build on this machine needs no network
        local = subprocess.run(base_cmd + ["--no-index", "--find-links", str(dest), req], capture_output=True, text=True)
        if local.returncode != 0:
            if offline:
                raise BuildError(f"no cached wheel of {req} for {target.name} (cp{python}, {target.platforms[0]}) and --offline was given")
            online = subprocess.run(base_cmd + [req], capture_output=True, text=True)
            if online.returncode != 0:
                raise BuildError(
                    f"{req} has no binary wheel for target {target.name} (Python {python}, {target.platforms[0]}): "
                    + _last_error(online.stderr)
                )
        found.append(_pick(dest, req, python, target))
    return found


def _last_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip().startswith("ERROR")]
    return lines[0] if lines else (stderr.strip().splitlines() or ["pip failed"])[-1]


def _pick(dest: Path, req: str, python: str, target: Target) -> Path:
    """The newest cached wheel of ``req`` that fits the Python ABI and platforms."""
    norm = re.sub(r"[-_.]+", "_", req).lower()
    abi = abi_tag(python)
    best: tuple[tuple, Path] | None = None
    for whl in dest.glob("*.whl"):
        parts = whl.name[:-4].split("-")
        if re.sub(r"[-_.]+", "_", parts[0]).lower() != norm:
            continue
        pytag, abitag, plat = parts[-3], parts[-2], parts[-1]
        if not (abi.rstrip("m") in pytag.split(".") or pytag.startswith("py3")):
            continue
        if abitag not in (abi, "abi3", "none"):
            continue
        if plat != "any" and not set(plat.split(".")) & set(target.platforms):
            continue
        version = tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.+]", parts[1]))
        if best is None or version > best[0]:
            best = (version, whl)
    if best is None:
        raise BuildError(f"pip reported success but no wheel of {req} for {abi} is in {dest}")
    return best[1]


def _unpack(whl: Path, dest: Path) -> None:
    with zipfile.ZipFile(whl) as zf:
        for info in zf.infolist():
            name = info.filename
            parts = Path(name).parts
            if name.startswith("/") or ".." in parts:
                raise BuildError(f"{whl.name}: unsafe path in wheel: {name!r}")
            if info.is_dir() or pruned(name):
                continue
            out = dest / name
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(out, 0o755 if mode & 0o111 or name.endswith(".so") else 0o644)


# ---------------------------------------------------------------- an own app's requirements.txt

REQ_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,\s-]*\])?\s*"
                    r"((===?|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+\s*(,\s*(===?|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+\s*)*)?"
                    r"(;[^#]*)?$")


def read_requirements(path: Path) -> list[str]:
    """The requirement lines of an app's requirements.txt: ``name[extras] (op version, ...) (; marker)``.

    Options (``-r``, ``-e``, ``--index-url``), URLs and paths are refused in one line naming the file and
    line: the board has no internet and builds nothing, so every requirement must be a binary wheel."""
    out = []
    for n, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if not REQ_RE.match(line):
            raise BuildError(f"{path}:{n}: not a requirement that resolves to a binary wheel: {raw.strip()!r} "
                             "(write name, name==1.2 or name>=1.2; no options, URLs or paths)")
        out.append(line)
    return out


def requirements_site(target: Target, python: str, reqs: list[str], *, cache: Path | None = None) -> Path:
    """The unpacked tree of ``reqs`` and their dependencies as binary wheels for ``target`` on CPython
    ``python``, built once per requirement set (``req-<hash>/`` beside the agent's trees). BuildError in one
    line, naming the package, the target and the nearest version that has a wheel, when one has none."""
    key = hashlib.sha256(json.dumps([sorted(reqs), list(target.platforms), _PRUNE_VERSION]).encode()).hexdigest()[:12]
    base = (cache or cache_root()) / f"{target.platforms[0]}-{abi_tag(python)}"
    site, stamp = base / f"req-{key}", base / f"req-{key}.json"
    if site.is_dir() and stamp.is_file():
        return site
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".req-", dir=base) as tmp:
        listing = Path(tmp, "requirements.txt")
        listing.write_text("\n".join(reqs) + "\n")
        r = subprocess.run(_pip_download(target, python, Path(tmp, "wheels"), deps=True) + ["-r", str(listing)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(no_wheel_line(r.stderr, target, python))
        unpacked = Path(tmp, "site")
        unpacked.mkdir()
        wheels = sorted(Path(tmp, "wheels").glob("*.whl"))
        for whl in wheels:
            _unpack(whl, unpacked)
        if site.exists():
            shutil.rmtree(site)
        os.replace(unpacked, site)
    stamp.write_text(json.dumps({"python": python, "platforms": target.platforms, "requirements": reqs,
                                 "wheels": [w.name for w in wheels]}, indent=1))
    return site


def no_wheel_line(stderr: str, target: Target, python: str) -> str:
    """pip's refusal as one line: the package, the target, and the nearest version that has a wheel."""
    where = f"target {target.name} (Python {python}, {abi_tag(python)}, {target.platforms[0]})"
    m = re.search(r"requirement ([^\s(]+) \(from versions: ([^)]*)\)", stderr)
    if not m:
        return f"the app's requirements do not resolve as binary wheels for {where}: {_last_error(stderr)}"
    req, versions = m[1], [v.strip() for v in m[2].split(",") if v.strip() and v.strip() != "none"]
    name = re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0]
    if not versions:
        return f"{name}: no version has a binary wheel for {where} (sdist only, or none built for it)"
    return f"{req}: no binary wheel for {where}; the nearest version that has one is {name}=={nearest(req, versions)}"


def nearest(req: str, versions: list[str]) -> str:
    """The version in ``versions`` closest to the one ``req`` pins (the newest when it pins none)."""

    def key(v: str) -> tuple[int, ...]:
        parts = [int(x) if x.isdigit() else 0 for x in re.split(r"[.+-]", v)]
        return tuple((parts + [0, 0, 0, 0])[:4])

    m = re.search(r"[=<>~!]=?\s*([0-9][A-Za-z0-9.]*)", req)
    if not m:
        return max(versions, key=key)
    want = key(m[1])
    below = [v for v in versions if key(v) <= want]
    above = [v for v in versions if key(v) > want]
    neighbours = ([max(below, key=key)] if below else []) + ([min(above, key=key)] if above else [])

    def distance(v: str) -> int:
        return sum(abs(a - b) * 1000 ** (3 - i) for i, (a, b) in enumerate(zip(key(v), want, strict=True)))

    return min(neighbours, key=lambda v: (distance(v), key(v)))
