"""Target profiles: what a board is (CPU arch, Python ABI, backend) so a release can be built for it.

A profile is chosen per board in ``inventory.yaml`` (``target:``). It decides which
wheels go into the release's ``site/`` (platform tags + Python version), which model
variant is pushed (``onnx`` for the CPU backend, ``om`` for Ascend), and which CANN
environment ``env.sh`` sources.

``python = None`` means "whatever python3 the board has": the sandbox target runs on the
machine's own system Python, so the version is read off the board before building.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Target:
    name: str
    arch: str  # uname -m on the board
    python: str | None  # "3.7"; None = read it off the board
    backend: str  # agent backend: "onnx" (onnxruntime on CPU) or "acl" (pyACL + .om on Ascend)
    platforms: tuple[str, ...]  # pip --platform tags, most specific first
    soc_version: str | None = None  # atc --soc_version for Ascend targets
    cann_env: tuple[str, ...] = ()  # set_env.sh candidates sourced by env.sh, first found wins
    pythons: tuple[str, ...] = ("python3",)  # interpreter candidates on the board, first found wins
    description: str = ""
    mm_arch: str | None = None  # MagicMind build arch ("mtp_372") for Cambricon targets
    precisions: tuple[str, ...] = ()  # MagicMind precision modes this target's models may be built in
    refuses: str = ""  # why the agent cannot run on this target at all (one line), else ""

    @property
    def model_kind(self) -> str:
        """The model file kind this target runs: .onnx on CPU, .om on Ascend, a MagicMind model on an MLU."""
        return {"acl": "om", "magicmind": "magicmind"}.get(self.backend, "onnx")

    @property
    def requirements(self) -> tuple[str, ...]:
        """The agent's dependencies for this backend (pyACL itself comes with CANN on the board)."""
        base = ("numpy", "Pillow")
        return base + ("onnxruntime",) if self.backend == "onnx" else base


def manylinux(arch: str, glibc_minor: int) -> tuple[str, ...]:
    """Every manylinux tag a board with glibc 2.<glibc_minor> accepts, newest first.

    pip's --platform takes tags literally (it does not expand ``manylinux_2_27`` to the older
    ones it implies), so each must be listed, or pip settles on an old wheel that happens to
    carry the one tag given.
    """
    tags = [f"manylinux_2_{m}_{arch}" for m in range(glibc_minor, 16, -1)]
    return (*tags, f"manylinux2014_{arch}")


_AARCH64 = manylinux("aarch64", 31)  # Debian bullseye
# what current wheels need (Debian 10+ / Ubuntu 18.10+ have it), and the older tags that cp37-era
# wheels carry (numpy 1.21.6 for cp37 is manylinux_2_12 only)
_X86_64 = (*manylinux("x86_64", 28), "manylinux_2_12_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64")
# Where the Atlas 200 DK keeps CANN's Python 3.7.5 beside Ubuntu 18.04's python3 (3.6.9): legacy
# samples call `python3.7.5`, CANN's environment guide installs it in /usr/local/python3.7.5 (whose
# bin/ is on PATH only in interactive shells), Huawei's sample_run.sh calls `python3.7`.
# python3 comes last: where it is 3.6 the board code refuses it in one line.
_DK_PYTHONS = (
    "python3.7.5",
    "/usr/local/python3.7.5/bin/python3.7",
    "/usr/local/python3.7.5/bin/python3",
    "python3.7",
    "python3",
)
# Seed 003's env.sh: NEUWARE_HOME=/usr/local/neuware (Cambricon's magicmind 1.7.0 image sets it too);
# an SDK env script beside it is sourced when present, the first found wins.
_NEUWARE = ("$NEUWARE_HOME/env.sh", "/usr/local/neuware/env.sh")
# The MLU370 seed's precision modes (its README's accuracy table).
_MLU370_PRECISIONS = ("force_float32", "force_float16", "qint8_mixed_float16")
_CANN = ("$HOME/Ascend/nnrt/set_env.sh", "$HOME/Ascend/ascend-toolkit/set_env.sh", "/usr/local/Ascend/ascend-toolkit/set_env.sh")

PROFILES: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "atlas200dk",
            arch="aarch64",
            python="3.7",
            backend="acl",
            # Ubuntu 18.04 on the board: glibc 2.27, so nothing newer than manylinux_2_27
            platforms=manylinux("aarch64", 27),
            soc_version="Ascend310",
            cann_env=_CANN,
            pythons=_DK_PYTHONS,
            description="Atlas 200 DK: Ascend 310, Ubuntu 18.04 aarch64, Python 3.7, CANN <= 6.0 under ~/Ascend",
        ),
        Target(
            "atlas200i-a2",
            arch="aarch64",
            python="3.9",
            backend="acl",
            platforms=manylinux("aarch64", 35),  # Ubuntu 22.04 image
            soc_version="Ascend310B4",
            cann_env=("/usr/local/Ascend/ascend-toolkit/set_env.sh", "/etc/profile.d/ascend_devkit.sh", *_CANN[:2]),
            # openEuler image: system 3.9.9; Ubuntu image: miniconda in /usr/local (23.0.RC2 on)
            pythons=("python3.9", "/usr/local/miniconda3/bin/python3", "python3"),
            description="Atlas 200I DK A2: Ascend 310B4, aarch64, Python 3.9",
        ),
        Target(
            "mlu370",
            arch="x86_64",
            python="3.7",
            backend="magicmind",
            # Cambricon's magicmind:1.7.0-x86_64-ubuntu18.04-py_3_7 image: glibc 2.27
            platforms=(*manylinux("x86_64", 27), "manylinux_2_12_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"),
            cann_env=_NEUWARE,
            pythons=("python3.7", "python3"),
            mm_arch="mtp_372",
            precisions=_MLU370_PRECISIONS,
            description="Cambricon MLU370 host: x86_64, Ubuntu 18.04, Python 3.7, MagicMind 1.7 under NEUWARE_HOME",
        ),
        Target(
            "ce3226",
            arch="aarch64",
            python=None,
            backend="magicmind",
            platforms=_AARCH64,
            mm_arch="mtp_322",
            refuses="a CE3226 edge board has no MagicMind Python runtime (Cambricon's edge SDK runs C++ only: "
            "edge_infer, /mps/bin/mm_run), so the agent's magicmind backend cannot run there; "
            "run it on an MLU370 host (target mlu370)",
            description="Cambricon CE3226 edge board (aarch64, /mps/lib): no Python runtime, refused",
        ),
        Target(
            "aarch64-cpu",
            arch="aarch64",
            python="3.9",
            backend="onnx",
            platforms=_AARCH64,
            description="Any aarch64 Linux board (Debian bullseye class), ONNX Runtime on the CPU",
        ),
        Target(
            "x86_64-cpu",
            arch="x86_64",
            python=None,
            backend="onnx",
            platforms=_X86_64,
            description="The sandbox board: this machine's system python3, ONNX Runtime on the CPU",
        ),
    )
}


def platforms_for(arch: str) -> tuple[str, ...]:
    """The wheel platforms of a generic board of ``arch`` (the CPU profiles' lists)."""
    return _X86_64 if arch == "x86_64" else _AARCH64


def for_board(board) -> Target:
    """The profile as ``board`` runs it.

    A sandbox board's interpreter may be a stand-in (a simulated Atlas 200 DK on a machine with
    no CPython 3.7 uses what it has, and says so), so its Python is read off the board
    (``python=None``); a sandbox board of another arch than its profile (the fast x86_64
    stand-in of an aarch64 Atlas) gets that arch's wheels. Real boards get the profile as is.
    """
    target = get(board.target)
    if not board.sandbox:
        return target
    if board.arch != target.arch:
        return replace(target, python=None, arch=board.arch, platforms=platforms_for(board.arch))
    return replace(target, python=None)


def pythons_for(board) -> tuple[str, ...]:
    """The interpreter to run board code with: the inventory's ``python:``, else the target's candidates."""
    return (board.python,) if board.python else get(board.target).pythons


def get(name: str) -> Target:
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown target {name!r} (known: {', '.join(PROFILES)})") from None


def abi_tag(python: str) -> str:
    """'3.7' -> 'cp37'; pip's --abi for CPython 3.7 is 'cp37m' (the m flag went away in 3.8)."""
    major, minor = python.split(".")[:2]
    tag = f"cp{major}{minor}"
    return tag + "m" if (int(major), int(minor)) < (3, 8) else tag
