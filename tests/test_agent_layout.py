"""The agent as a house: one module per backend describes it (NAME, OPTIONS, BACKEND.from_job), the backends
package only knows their names, nothing imports in a circle, job validation stays cheap, and no module
uses another's private names."""

import ast
import subprocess
import sys

import pytest

from agent import backends
from agent import job as jobmod
from agent.backends import Backend, BackendError, for_job, get_backend

BACKENDS_DIR = backends.__path__[0]


def _job(backend, **extra):
    data = {"run_id": "r", "mode": "run", "release": "/", "out_dir": "/o", "model": "m", "backend": backend}
    data.update(extra)
    return jobmod.from_dict(data)


def test_each_backend_module_describes_itself():
    assert jobmod.BACKENDS == backends.NAMES
    for name in backends.NAMES:
        mod = backends.module(name)
        assert mod.NAME == name and mod.BACKEND.name == name and issubclass(mod.BACKEND, Backend)
        assert all(kind in (bool, int) or (isinstance(kind, tuple) and all(isinstance(w, str) for w in kind))
                   for kind in mod.OPTIONS.values()), name
        assert backends.backend_options(name) is mod.OPTIONS
    with pytest.raises(BackendError, match="unknown backend 'tpu' .known: onnx, acl, magicmind."):
        get_backend("tpu")


def test_no_backend_module_imports_the_package():
    """The modules take the interface from .base: ``from . import X`` would make the import circle again."""
    import os

    for fn in sorted(os.listdir(BACKENDS_DIR)):
        if not fn.endswith(".py") or fn == "__init__.py":
            continue
        with open(os.path.join(BACKENDS_DIR, fn)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert node.module, f"{fn}: from . import {[a.name for a in node.names]}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not [n for n in names if n.startswith("agent.backends")], fn


def test_job_validation_the_backends_and_formats_import_no_numpy_or_runtime():
    """The host may import agent.formats (the image suffixes) and agent.job without the board's dependencies."""
    code = (
        "import sys\n"
        "from agent import backends, job\n"
        "base = dict(run_id='r', mode='run', release='/', out_dir='/o', model='m')\n"
        "job.from_dict(dict(base, backend='acl', backend_options={'async': True, 'buffers': 3}))\n"
        "job.from_dict(dict(base, backend='magicmind', backend_options={'device': 1}))\n"
        "job.from_dict(dict(base, backend='onnx'))\n"
        "for name in backends.NAMES: backends.module(name)\n"
        "from agent import formats\n"
        "print(sorted(m for m in ('numpy', 'PIL', 'onnxruntime', 'acl', 'magicmind') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_backend_options_errors_are_the_jobs():
    with pytest.raises(jobmod.JobError, match="^backend_options apply to the acl and magicmind backends only, not onnx$"):
        _job("onnx", backend_options={"device": 0})
    with pytest.raises(jobmod.JobError, match=r"^unknown backend option 'asynch' \(known: async, callback_interval, buffers, device, decode\)$"):
        _job("acl", backend_options={"asynch": True})
    with pytest.raises(jobmod.JobError, match=r"^unknown backend option 'async' \(known: device\)$"):
        _job("magicmind", backend_options={"async": True})
    with pytest.raises(jobmod.JobError, match="^backend option async must be a boolean$"):
        _job("acl", backend_options={"async": 1})
    with pytest.raises(jobmod.JobError, match="^backend option buffers must be a non-negative integer$"):
        _job("acl", backend_options={"buffers": True})
    with pytest.raises(jobmod.JobError, match="^backend option device must be a non-negative integer$"):
        _job("magicmind", backend_options={"device": -1})
    with pytest.raises(jobmod.JobError, match="^backend option decode must be one of cpu, dvpp, not 'gpu'$"):
        _job("acl", backend_options={"decode": "gpu"})
    assert _job("acl", backend_options={"decode": "dvpp"}).backend_options == {"decode": "dvpp"}
    with pytest.raises(jobmod.JobError, match="^backend_options must be a JSON object$"):
        _job("acl", backend_options=[])
    with pytest.raises(jobmod.JobError, match="^backend must be one of onnx, acl, magicmind, not 'tpu'$"):
        _job("tpu")


def test_for_job_turns_the_job_into_each_backends_settings():
    acl = for_job(_job("acl", batch=4, backend_options={"async": True, "callback_interval": 3, "buffers": 5, "device": 1}))
    assert (acl.async_mode, acl.callback_interval, acl.pool_size, acl.device_id, acl.preferred_batch) == (True, 3, 5, 1, 4)
    plain = for_job(_job("acl"))
    assert (plain.async_mode, plain.callback_interval, plain.pool_size, plain.device_id, plain.preferred_batch) == (
        False, 1, 3, 0, 1)
    assert for_job(_job("magicmind", backend_options={"device": 2})).device_id == 2
    assert for_job(_job("magicmind")).device_id == 0
    onnx = for_job(_job("onnx", threads=2))
    assert (onnx.threads, onnx.spinning) == (2, False)
    assert for_job(_job("onnx", threads=2), threads=1, spinning=True).threads == 1  # overrides win


def test_backend_modules_stay_small():
    """One concern a module (the acl backend is four: acl, acl_buffers, acl_async, acl_codes)."""
    import os

    sizes = {}
    for fn in sorted(os.listdir(BACKENDS_DIR)):
        if fn.endswith(".py"):
            with open(os.path.join(BACKENDS_DIR, fn)) as f:
                sizes[fn] = len(f.read().splitlines())
    assert {fn: n for fn, n in sizes.items() if n > 400} == {}


def test_no_agent_module_uses_another_modules_private_names():
    """``from .x import _name`` or ``x._name`` across modules: what another module needs is public."""
    import os

    root = os.path.dirname(BACKENDS_DIR)
    found = []
    for folder, _dirs, files in os.walk(root):
        for fn in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, fn)
            with open(path) as f:
                tree = ast.parse(f.read())
            modules = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    modules.update(a.asname or a.name for a in node.names)
                    found += [f"{fn}: from {node.module} import {a.name}" for a in node.names if _private(a.name)]
                elif isinstance(node, ast.Import):
                    modules.update((a.asname or a.name).split(".")[0] for a in node.names)
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name):
                    if node.value.id in modules:
                        found.append(f"{fn}:{node.lineno} {node.value.id}.{node.attr}")
    assert found == []


def _private(name):
    return name.startswith("_") and not name.startswith("__")
