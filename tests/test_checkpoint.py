"""deploy.models.checkpoint: PyTorch checkpoints read as numpy, with nothing in the pickle run.

Checkpoints are written here by hand (pickle opcodes, in the two layouts torch uses) so these tests
need no torch; the ``torch`` ones check the reader against ``torch.save`` itself. Malicious files name
``os.system`` & co. in the ways a pickle can (GLOBAL, STACK_GLOBAL, a class's ``__reduce__``) with a
command that would create a marker file: the marker must not exist afterwards.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from deploy.errors import DeployError
from deploy.models import ModelError, efficientnet
from deploy.models.checkpoint import LEGACY_MAGIC, read_state_dict

STORAGE = {"f4": "FloatStorage", "i8": "LongStorage", "f2": "HalfStorage", "u1": "ByteStorage"}


def _frag(value) -> bytes:
    """A primitive's pickle opcodes, without PROTO and STOP."""
    return pickle.dumps(value, protocol=2)[2:-1]


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _state_pickle(tensors: dict[str, np.ndarray], legacy: bool) -> tuple[bytes, list[tuple[str, np.ndarray]]]:
    """``OrderedDict(name -> _rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict()))`` as
    torch writes it; one storage per tensor, keys "0", "1", ..."""
    out = [b"\x80\x02", _global("collections", "OrderedDict"), b")R"]
    storages = []
    for i, (name, arr) in enumerate(tensors.items()):
        arr = np.array(arr, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        key = str(i)
        storages.append((key, arr))
        stride = tuple(s // arr.itemsize for s in arr.strides)
        pid = b"(" + _frag("storage") + _global("torch", STORAGE[arr.dtype.str[1:]]) + _frag(key) + _frag("cpu")
        pid += _frag(arr.size) + (b"N" if legacy else b"") + b"tQ"
        out += [_frag(name), _global("torch._utils", "_rebuild_tensor_v2"), b"(", pid, _frag(0)]
        out += [_frag(tuple(arr.shape)), _frag(stride), b"\x89", _global("collections", "OrderedDict"), b")RtR", b"s"]
    out.append(b".")
    return b"".join(out), storages


def write_zip(path: Path, tensors: dict[str, np.ndarray] | None = None, data_pkl: bytes | None = None) -> Path:
    """A checkpoint in torch's zip layout (``archive/data.pkl`` + ``archive/data/<key>``)."""
    storages: list = []
    if data_pkl is None:
        data_pkl, storages = _state_pickle(tensors or {}, legacy=False)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        for key, arr in storages:
            zf.writestr(f"archive/data/{key}", arr.astype(arr.dtype.newbyteorder("<")).tobytes())
        zf.writestr("archive/version", "3\n")
    return path


def write_legacy(path: Path, tensors: dict[str, np.ndarray] | None = None, main: bytes | None = None) -> Path:
    """A checkpoint in torch's legacy layout (five pickles, then count + bytes per storage)."""
    storages: list = []
    if main is None:
        main, storages = _state_pickle(tensors or {}, legacy=True)
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    parts = [pickle.dumps(LEGACY_MAGIC, 2), pickle.dumps(1001, 2), pickle.dumps(info, 2), main]
    parts.append(pickle.dumps(sorted(k for k, _ in storages), 2))
    for _key, arr in sorted(storages, key=lambda s: s[0]):
        parts.append(struct.pack("<q", arr.size) + arr.tobytes())
    path.write_bytes(b"".join(parts))
    return path


def _message(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and len(msg) < 400, msg
    assert isinstance(excinfo.value, DeployError)
    return msg


TENSORS = {
    "conv.weight": np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3) / 7,
    "bn.num_batches_tracked": np.array(5, dtype=np.int64),
    "half": np.array([1.5, -2.25], dtype=np.float16),
    "mask": np.array([[1, 0], [255, 3]], dtype=np.uint8),
}


@pytest.mark.parametrize("writer", [write_zip, write_legacy], ids=["zip", "legacy"])
def test_reads_tensors_of_both_layouts(tmp_path, writer):
    state = read_state_dict(writer(tmp_path / "w.pth", TENSORS))
    assert list(state) == list(TENSORS)
    for name, arr in TENSORS.items():
        assert state[name].dtype == arr.dtype and state[name].shape == arr.shape, name
        assert np.array_equal(state[name], arr), name


def test_reads_the_packaged_efficientnet_checkpoint():
    """The file the demo is built from: legacy layout, 296 tensors, every one EfficientNet-Lite0's."""
    from deploy.models import lite0_weights

    weights = lite0_weights()
    state = read_state_dict(weights)
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_conv_stem.weight"].dtype == np.float32
    assert state["_bn0.num_batches_tracked"].shape == () and state["_bn0.num_batches_tracked"].dtype == np.int64
    efficientnet.check_architecture(state, weights)  # raises if any tensor is missing or misshapen


# --- code in the pickle is refused and never run ------------------------------------------------------


class Evil:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _evil_pickles(marker: Path) -> dict[str, bytes]:
    touch = f"touch {marker}"
    return {
        "GLOBAL os.system": b"\x80\x02" + _global("os", "system") + _frag(touch) + b"\x85R.",
        "GLOBAL builtins.eval": b"\x80\x02" + _global("builtins", "eval")
        + _frag(f"__import__('os').system({touch!r})") + b"\x85R.",
        "class __reduce__ (protocol 2)": pickle.dumps(Evil(touch), protocol=2),
        "class __reduce__ (STACK_GLOBAL)": pickle.dumps(Evil(touch), protocol=4),
        "inside a state dict": b"\x80\x02" + _global("collections", "OrderedDict") + b")R"
        + _frag("conv.weight") + _global("subprocess", "call") + _frag(("sh", "-c", touch)) + b"\x85Rs.",
    }  # fmt: skip


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_code_in_the_pickle_is_refused_and_not_run(tmp_path, layout):
    marker = tmp_path / "pwned"
    for what, payload in _evil_pickles(marker).items():
        path = tmp_path / f"evil-{layout}.pth"
        if layout == "zip":
            write_zip(path, data_pkl=payload)
        else:
            write_legacy(path, main=payload)
        with pytest.raises(ModelError) as exc:
            read_state_dict(path)
        msg = _message(exc)
        assert msg.startswith(f"refused to load weights {path}: the pickle names "), (what, msg)
        assert "nothing was run" in msg
        assert not marker.exists(), f"{what}: the pickle ran code"
    # the globals are named as the file spells them: os.system pickles as posix.system on Linux
    write_zip(tmp_path / "g.pth", data_pkl=_evil_pickles(marker)["GLOBAL builtins.eval"])
    with pytest.raises(ModelError) as exc:
        read_state_dict(tmp_path / "g.pth")
    assert "the pickle names builtins.eval " in _message(exc)


def test_refused_checkpoint_through_the_cli_is_one_line_and_writes_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = write_legacy(tmp_path / "evil.pth", main=pickle.dumps(Evil(f"touch {marker}"), protocol=2))
    dest = tmp_path / "demo"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "deploy", "-i", str(root / "inventory.yaml"), "model", "demo", "--dest", str(dest),
         "--weights", str(evil)],
        capture_output=True, text=True, cwd=root, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"refused to load weights {evil}: the pickle names posix.system" in lines[0]
    assert not marker.exists()
    assert not dest.exists() or not any(dest.rglob("*")), sorted(dest.rglob("*"))


@pytest.mark.parametrize(
    "what, payload, fragment",
    [
        ("numpy's own reconstructor", b"\x80\x02" + _global("numpy.core.multiarray", "_reconstruct") + b").",
         "the pickle names numpy.core.multiarray._reconstruct"),
        ("a torch global outside the list", b"\x80\x02" + _global("torch", "load") + b").",
         "the pickle names torch.load"),
        ("calling a storage type", b"\x80\x02" + _global("torch", "FloatStorage") + b")R.",
         "not a readable PyTorch checkpoint"),
        ("a tensor without a storage", b"\x80\x02" + _global("torch._utils", "_rebuild_tensor_v2")
         + b"(K\x00K\x00))\x89tR.", "_rebuild_tensor_v2 got no storage"),
        ("a pickled module", b"\x80\x02(X\x06\x00\x00\x00moduleX\x01\x00\x00\x00mtQ.",
         "is not a storage (a pickled module, not a state dict?)"),
        ("a bare list", pickle.dumps([1, 2], protocol=2), "holds a list, not a state dict"),
    ],
    ids=["numpy-reconstruct", "torch.load", "call-storage-type", "tensor-without-storage", "module", "list"],
)  # fmt: skip
def test_other_pickles_that_are_not_state_dicts(tmp_path, what, payload, fragment):
    path = write_zip(tmp_path / "w.pth", data_pkl=payload)
    with pytest.raises(ModelError) as exc:
        read_state_dict(path)
    assert fragment in _message(exc), what


def test_tensor_past_the_end_of_its_storage_is_refused(tmp_path):
    main, storages = _state_pickle({"w": np.zeros(4, np.float32)}, legacy=False)
    main = main.replace(_frag((4,)), _frag((40,)))  # size 40 over a 4-element storage
    path = tmp_path / "w.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", main)
        zf.writestr("archive/data/0", storages[0][1].tobytes())
    with pytest.raises(ModelError) as exc:
        read_state_dict(path)
    assert "runs past the end of storage 0" in _message(exc)


# --- damaged files: one line each ---------------------------------------------------------------------


def test_truncated_legacy_checkpoint(tmp_path):
    from deploy.models import lite0_weights

    data = lite0_weights().read_bytes()
    path = tmp_path / "half.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError) as exc:
        read_state_dict(path)
    assert _message(exc).startswith(f"cannot load weights {path}: file is truncated in storage ")


def test_truncated_zip_checkpoint(tmp_path):
    full = write_zip(tmp_path / "full.pth", TENSORS).read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(full[: len(full) - 40])
    with pytest.raises(ModelError) as exc:
        read_state_dict(path)
    assert _message(exc).startswith(f"cannot load weights {path}: damaged or truncated zip archive")


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint\n", bytes(range(256)) * 4], ids=["empty", "text", "binary"])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "w.pth"
    path.write_bytes(content)
    with pytest.raises(ModelError) as exc:
        read_state_dict(path)
    assert _message(exc) == f"cannot load weights {path}: neither a zip archive nor a legacy torch.save file"


def test_wrong_architecture_is_one_line(tmp_path):
    path = write_zip(tmp_path / "resnet.pth", {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)})
    with pytest.raises(ModelError) as exc:
        efficientnet.lite0_onnx_bytes(path)
    msg = _message(exc)
    assert msg.startswith(f"weights {path} are not EfficientNet-Lite0: tensors ")
    assert msg.endswith("tensors 247 missing (e.g. _blocks.0._bn1.bias), 1 unexpected (e.g. conv1.weight)")


def test_misshapen_tensor_is_named(tmp_path):
    from deploy.models import lite0_weights

    state = read_state_dict(lite0_weights())
    state["_fc.weight"] = state["_fc.weight"][:10]  # a 10-class head
    path = write_zip(tmp_path / "ten.pth", {k: v for k, v in state.items() if v.dtype == np.float32})
    with pytest.raises(ModelError) as exc:
        efficientnet.lite0_onnx_bytes(path)
    assert "1 of the wrong shape (e.g. _fc.weight is (10, 1280), not (1000, 1280))" in _message(exc)


# --- against torch itself ------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_matches_torch_load(tmp_path, zipped):
    torch = pytest.importorskip("torch")
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    lin = torch.nn.Linear(4, 3)
    state = {
        "model": {
            "t": base.t(),  # non-contiguous
            "view": base[2:5, 3:7],  # offset into a shared storage
            "param": lin.weight,  # a Parameter
            "d": torch.tensor([1.0, 2.0], dtype=torch.float64),
            "i": torch.tensor(7),
        },
        "epoch": 3,
    }
    path = tmp_path / "t.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zipped)
    got = read_state_dict(path)
    for name, t in state["model"].items():
        want = t.detach().numpy()
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        assert np.array_equal(got[name], want), name
    with io.BytesIO() as buf:  # and the packaged checkpoint re-saved in the zip layout
        from deploy.models import lite0_weights

        ref = torch.load(lite0_weights(), map_location="cpu", weights_only=True)
        torch.save(ref, buf)
        (tmp_path / "lite0.pth").write_bytes(buf.getvalue())
    ours = read_state_dict(tmp_path / "lite0.pth")
    assert set(ours) == set(ref) and all(np.array_equal(ours[k], ref[k].numpy()) for k in ref)
