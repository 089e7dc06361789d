"""Target profiles, wheel selection for a target, and the model variant each target gets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from deploy.errors import BuildError
from deploy.inventory import App, Board
from deploy.release import hashcache, variant, wheelhouse
from deploy.targets import PROFILES, abi_tag, manylinux


def test_profiles():
    dk = PROFILES["atlas200dk"]
    assert (dk.arch, dk.python, dk.backend, dk.soc_version, dk.model_kind) == ("aarch64", "3.7", "acl", "Ascend310", "om")
    assert "onnxruntime" not in dk.requirements  # pyACL comes with CANN on the board
    a2 = PROFILES["atlas200i-a2"]
    assert (a2.arch, a2.python, a2.backend, a2.soc_version) == ("aarch64", "3.9", "acl", "Ascend310B4")
    cpu = PROFILES["aarch64-cpu"]
    assert (cpu.arch, cpu.python, cpu.backend, cpu.model_kind) == ("aarch64", "3.9", "onnx", "onnx")
    assert PROFILES["x86_64-cpu"].python is None  # the sandbox's own python3, read off the board
    assert any("$HOME/Ascend/nnrt/set_env.sh" in c for c in dk.cann_env)


def test_platform_tags_list_every_glibc_step():
    tags = manylinux("aarch64", 27)
    assert tags[0] == "manylinux_2_27_aarch64" and tags[-1] == "manylinux2014_aarch64"
    assert "manylinux_2_18_aarch64" in tags and len(tags) == 12
    assert PROFILES["atlas200dk"].platforms == tags  # Ubuntu 18.04: glibc 2.27, nothing newer
    assert abi_tag("3.7") == "cp37m" and abi_tag("3.9") == "cp39" and abi_tag("3.11") == "cp311"


def _wheels(tmp_path: Path, names: list[str]) -> Path:
    for n in names:
        (tmp_path / n).write_bytes(b"")
    return tmp_path


def test_wheel_pick_respects_abi_platform_and_version(tmp_path):
    d = _wheels(tmp_path, [
        "numpy-1.21.6-cp37-cp37m-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
        "numpy-1.21.5-cp37-cp37m-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
        "numpy-2.0.2-cp39-cp39-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
        "numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
        "onnxruntime-1.19.2-cp39-cp39-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl",
        "pillow-9.5.0-cp37-cp37m-manylinux_2_28_aarch64.whl",
    ])
    dk, cpu = PROFILES["atlas200dk"], PROFILES["aarch64-cpu"]
    assert wheelhouse._pick(d, "numpy", "3.7", dk).name.startswith("numpy-1.21.6-cp37")
    assert wheelhouse._pick(d, "numpy", "3.9", cpu).name.startswith("numpy-2.0.2-cp39")
    assert wheelhouse._pick(d, "onnxruntime", "3.9", cpu).name.startswith("onnxruntime-1.19.2")
    with pytest.raises(BuildError):  # glibc 2.28 wheel does not fit the 200 DK's 2.27
        wheelhouse._pick(d, "Pillow", "3.7", dk)


def test_missing_wheel_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOY_WHEEL_CACHE", str(tmp_path))
    nowhere = dataclasses.replace(PROFILES["aarch64-cpu"], name="sparc-board", platforms=("linux_sparc64",))
    with pytest.raises(BuildError) as info:
        wheelhouse.site_for(nowhere, "3.9")
    msg = str(info.value)
    assert "has no binary wheel for target sparc-board (Python 3.9, linux_sparc64)" in msg and "\n" not in msg


def test_offline_build_uses_only_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOY_WHEEL_CACHE", str(tmp_path))
    with pytest.raises(BuildError, match="no cached wheel .* --offline"):
        wheelhouse.site_for(PROFILES["aarch64-cpu"], "3.9", offline=True)


def _app(tmp_path, **models):
    return App(name="a", models={k: tmp_path / v for k, v in models.items()}, labels=None, images=None,
               preprocess={"preset": "imagenet"})


def test_model_variant_per_backend(tmp_path):
    (tmp_path / "net.onnx").write_bytes(b"onnx")
    (tmp_path / "net.om").write_bytes(b"IMOD" + bytes(252))  # a real .om's header (bundle checks it), no payload
    board = Board(name="atlas1", target="atlas200dk", host="192.168.1.2")
    both = _app(tmp_path, onnx="net.onnx", om="net.om")
    assert variant.model_for(both, PROFILES["atlas200dk"], board).name == "net.om"
    assert variant.model_for(both, PROFILES["aarch64-cpu"], board).name == "net.onnx"
    only_onnx = _app(tmp_path, onnx="net.onnx")
    with pytest.raises(BuildError) as info:
        variant.model_for(only_onnx, PROFILES["atlas200dk"], board)
    assert "needs an .om model" in str(info.value) and "deploy model convert" in str(info.value)
    gone = _app(tmp_path, om="missing.om")
    with pytest.raises(BuildError, match="model for board atlas1 not found"):
        variant.model_for(gone, PROFILES["atlas200i-a2"], board)


def test_hash_cache_does_not_reread_unchanged_files(tmp_path):
    f = tmp_path / "model.onnx"
    f.write_bytes(b"x" * 1000)
    cache = hashcache.HashCache(tmp_path / "cache.json")
    real = cache.digest(f, f.stat())
    cache.save()
    # poison the stored digest: if the file were read again, the real digest would come back
    again = hashcache.HashCache(tmp_path / "cache.json")
    again.data[str(f)][2] = "cached-without-reading"
    assert again.digest(f, f.stat()) == "cached-without-reading"
    st = f.stat()
    import os

    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched: same size, new mtime
    assert again.digest(f, f.stat()) == real


def _elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return int.from_bytes(head[18:20], "little")


@pytest.mark.parametrize("target, python, tag", [("atlas200dk", "3.7", "cpython-37m"), ("atlas200i-a2", "3.9", "cpython-39")])
def test_cross_built_site_is_aarch64_for_the_boards_python(target, python, tag):
    """A real cross-build (PyPI wheels, cached): the extension modules are AArch64 ELF for the board's ABI."""
    site = wheelhouse.site_for(PROFILES[target], python)
    assert (site / "numpy").is_dir() and (site / "PIL").is_dir()
    assert not (site / "onnxruntime").exists()  # Ascend boards run pyACL from CANN, not onnxruntime
    sos = list((site / "numpy").rglob(f"*{tag}*aarch64*.so")) + list((site / "PIL").rglob(f"*{tag}*aarch64*.so"))
    assert len(sos) >= 2, sorted(p.name for p in (site / "numpy").rglob("*.so"))[:5]
    assert {_elf_machine(p) for p in sos} == {183}  # EM_AARCH64
    assert not list(site.rglob("tests/*"))  # pruned
