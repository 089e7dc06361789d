"""The one copy of "run the agent on this host": the health check's reference and verify's reference.

Both ask the same question, what the app's ONNX model says in fp32 on this host's ONNX Runtime with the
agent's own preprocessing, and both get it the same way: ``python -m agent run`` as a subprocess on a
job written here, in a scratch directory removed afterwards. A subprocess, not an import: the host's
process never loads the agent's code (numpy, onnxruntime, Pillow and their threads stay out of the CLI),
and the agent that answers is the very one the releases ship (:data:`AGENT_DIR`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import agent

AGENT_DIR = Path(agent.__file__).resolve().parent  # the agent this host ships (``release/bundle.py``)


@dataclass(frozen=True)
class HostRun:
    """A finished host run: its output directory (``results.jsonl``, ``probs.jsonl``, ``summary.json``) while
    the run's context is open, the agent's exit status and its stderr; ``names[i]`` is the id of input ``i``."""

    out: Path
    returncode: int
    stderr: str
    names: tuple[str, ...] = ()

    def error(self) -> str:
        """Why the agent classified nothing: its summary's error, else its last stderr line, else its status."""
        try:
            error = json.loads((self.out / "summary.json").read_text()).get("error")
        except (OSError, ValueError, AttributeError):
            error = None
        if not error:
            tail = [ln for ln in (self.stderr or "").splitlines() if ln.strip()]
            error = tail[-1] if tail else f"exit status {self.returncode}"
        return str(error).splitlines()[0][:300]


@contextmanager
def run(app, onnx: Path, inputs: Path | list[Path], *, run_id: str, topk: int, probs: bool = False,
        timeout: float = 600) -> Iterator[HostRun]:
    """Classify ``inputs`` (a file or folder, or a list of files) with ``onnx`` and ``app``'s preprocessing.

    A list is linked into the run under numbered names (``0000.jpg``...), so each result maps back to its
    file whatever the files are called (``names``). The scratch directory goes when the context ends.
    """
    with tempfile.TemporaryDirectory(prefix=f"deploy-{run_id}-") as tmp:
        names: tuple[str, ...] = ()
        if isinstance(inputs, list):
            folder = Path(tmp, "in")
            folder.mkdir()
            names = tuple(f"{i:04d}{f.suffix.lower()}" for i, f in enumerate(inputs))
            for name, f in zip(names, inputs, strict=True):
                (folder / name).symlink_to(f.resolve())
            inputs = folder
        job = {"v": 1, "run_id": run_id, "mode": "run", "release": tmp, "out_dir": f"{tmp}/out",
               "model": str(onnx.resolve()), "backend": "onnx", "preprocess": app.preprocess,
               "labels": str(app.labels.resolve()) if app.labels else None, "inputs": [str(inputs)],
               "batch": app.batch, "topk": topk, "labelled": False, "probs": probs}
        Path(tmp, "job.json").write_text(json.dumps(job))
        path = os.pathsep.join(filter(None, [str(AGENT_DIR.parent), os.environ.get("PYTHONPATH")]))
        r = subprocess.run([sys.executable, "-m", "agent", "run", "--job", f"{tmp}/job.json"],
                           env={**os.environ, "PYTHONPATH": path}, cwd=tmp, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout)
        yield HostRun(Path(tmp, "out"), r.returncode, r.stderr or "", names)


def lines(path: Path) -> list[str]:
    """The non-empty lines of a JSON-lines file (none when it is missing)."""
    try:
        return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError:
        return []
