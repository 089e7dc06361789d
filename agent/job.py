"""The job the host writes for one agent run (``runs/<run-id>/job.json``).

The host (``deploy.jobs``) writes it; the agent reads it with :func:`load`. All paths are
either absolute or relative to ``release`` (the release directory the run uses). Python 3.7.

Example::

    {
      "v": 1,
      "run_id": "20261121-223000-ab12",
      "mode": "run",                          # run | bench | eval
      "release": "/home/u/HIAI_PROJECTS/classify/releases/3f2a...",
      "out_dir": "/home/u/HIAI_PROJECTS/classify/runs/20261121-223000-ab12",
      "model": "models/efficientnet_lite0.onnx",
      "backend": "onnx",                      # onnx | acl | magicmind
      "backend_options": {"async": true, "callback_interval": 8, "buffers": 4, "decode": "dvpp"},  # acl's (OPTIONS)
      "preprocess": {"preset": "imagenet"},   # preset name plus optional overrides (see agent.preprocess)
      "labels": "labels/imagenet_classes.txt",
      "inputs": ["images"],                   # files and/or directories
      "batch": 1,
      "topk": 5,
      "labelled": true,                       # write labelled copies of the images
      "probs": false,                         # also write probs.jsonl: each image's whole probability vector
      "threads": 0,                           # 0 = one per core
      "bench": {"loop": 100, "warmup": 5, "batch_sizes": [1]},
      "eval": {"label_file": "val_label.txt"}  # or {"truth": {"NAME": LABEL, ...}}: the host's, inline
    }
"""

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from . import backends

MODES = ("run", "bench", "eval")
BACKENDS = backends.NAMES
# The backend_options each backend takes are declared by its module (agent/backends/<name>.py
# OPTIONS); reading them imports neither numpy nor a runtime.


class JobError(ValueError):
    """The job file is missing, unreadable or invalid."""


@dataclass
class Job:
    run_id: str
    mode: str
    release: str
    out_dir: str
    model: str
    backend: str = "onnx"
    backend_options: Dict[str, Any] = field(default_factory=dict)
    preprocess: Dict[str, Any] = field(default_factory=lambda: {"preset": "imagenet"})
    labels: Optional[str] = None
    inputs: List[str] = field(default_factory=list)
    batch: int = 1
    topk: int = 5
    labelled: bool = True
    probs: bool = False
    threads: int = 0
    bench: Dict[str, Any] = field(default_factory=dict)
    eval: Dict[str, Any] = field(default_factory=dict)

    def path(self, p):
        """Resolve a job path: absolute stays, relative is taken from the release directory."""
        if p is None:
            return None
        p = os.path.expanduser(p)
        return p if os.path.isabs(p) else os.path.join(self.release, p)

    def to_json(self):
        return json.dumps(self.__dict__, indent=2, sort_keys=True)


_FIELDS = set(Job.__dataclass_fields__)


def from_dict(data):
    if not isinstance(data, dict):
        raise JobError("job must be a JSON object")
    if data.get("v", 1) != 1:
        raise JobError("unsupported job version {!r}".format(data.get("v")))
    unknown = set(data) - _FIELDS - {"v"}
    if unknown:
        raise JobError("unknown job field(s): {}".format(", ".join(sorted(unknown))))
    for req in ("run_id", "mode", "release", "out_dir", "model"):
        if not data.get(req):
            raise JobError(f"job lacks {req!r}")
    kwargs = {k: v for k, v in data.items() if k != "v"}
    job = Job(**kwargs)
    if job.mode not in MODES:
        raise JobError("mode must be one of {}, not {!r}".format(", ".join(MODES), job.mode))
    if job.backend not in BACKENDS:
        raise JobError("backend must be one of {}, not {!r}".format(", ".join(BACKENDS), job.backend))
    _check_backend_options(job)
    if not isinstance(job.batch, int) or job.batch < 1:
        raise JobError("batch must be a positive integer")
    if not isinstance(job.topk, int) or job.topk < 1:
        raise JobError("topk must be a positive integer")
    return job


def _check_backend_options(job):
    opts = job.backend_options
    if not isinstance(opts, dict):
        raise JobError("backend_options must be a JSON object")
    known = backends.backend_options(job.backend)
    if opts and not known:
        takers = " and ".join(name for name in BACKENDS if backends.backend_options(name))
        raise JobError(f"backend_options apply to the {takers} backends only, not {job.backend}")
    for key, value in opts.items():
        kind = known.get(key)
        if kind is None:
            raise JobError("unknown backend option {!r} (known: {})".format(key, ", ".join(known)))
        if isinstance(kind, tuple):  # one of these words
            if value not in kind:
                raise JobError(f"backend option {key} must be one of {', '.join(kind)}, not {value!r}")
            continue
        if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 0)):
            raise JobError(
                f"backend option {key} must be a {'boolean' if kind is bool else 'non-negative integer'}"
            )


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise JobError(f"cannot read job {path}: {exc}") from None
    return from_dict(data)
