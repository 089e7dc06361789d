"""The health check's probe, computed with the release: which image a release ships to be checked with, and
the host's own answer for it.

After a push switches ``current``, the board proves the release works: its agent classifies a probe
image shipped in the release, and the top-1 must be the one the host computed for that image
(``deploy/board/health.py`` runs it and switches back by itself on a failure). What travels:

* ``health/probe.<ext>``: ``app.health.probe``, else the first of the app's images (sorted, at most
  ``CANDIDATES``, none over ``MAX_PROBE_BYTES``) the host classifies confidently (top-1 probability
  >= ``CONFIDENT`` and ``MARGIN`` above the second), so fp16 and AIPP on an Ascend board cannot flip
  it; when none is confident, the one with the widest margin;
* ``health/health.json``: the probe's path, where it came from and the expected ``[index, label]``.
  Only that, so the release id does not change with the host's ONNX Runtime version.

The reference is the app's ONNX model, fp32, on the host's ONNX Runtime with the agent's own
preprocessing: ``python -m agent run`` as a subprocess (the core never imports the agent's code; see
docs/ARCHITECTURE.md), cached per image in ``.deploy/health/`` by the digests of model, image, labels
and agent code plus the preprocessing, so a redeploy does not pay for it. Without an ONNX model, or
when the host cannot run it, the release ships no expected class and the board's check only requires
the agent to load the model and classify the probe.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from agent.formats import IMAGE_EXTENSIONS

from .. import hostagent
from ..errors import BuildError
from ..inventory import App
from .hashcache import HashCache

SPEC = "health/health.json"
CANDIDATES = 16
MAX_PROBE_BYTES = 2 << 20
CONFIDENT = 0.5
MARGIN = 0.2
_computing = threading.Lock()  # one reference run at a time (a fleet builds targets in parallel)


@dataclass(frozen=True)
class Probe:
    """The image a release is checked with: ``image`` (local) ships as ``path``; ``expected`` is the host's top-1."""

    image: Path
    path: str
    source: str
    expected: tuple[int, str] | None
    score: float | None = None
    note: str = ""  # how it was chosen, or why there is no reference

    def spec(self) -> bytes:
        """``health/health.json``: only what the board needs, and nothing that varies between hosts."""
        doc = {"format": 1, "probe": self.path, "source": self.source,
               "expected": list(self.expected) if self.expected else None}
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def probe_for(app: App, cache: HashCache, state_dir: Path | None) -> Probe | None:
    """The probe the app's releases ship, with the host's reference; None when there is no image to use."""
    if app.probe is not None:
        return _explicit(app, cache, state_dir)
    files = _candidates(app)
    if not files:
        return None
    results, error = _references(app, files, cache, state_dir, stop_at_confident=True)
    scored = [(f, r) for f, r in zip(files, results, strict=True) if r is not None]
    if not scored:
        return _probe(files[0], f"images/{files[0].relative_to(app.images).as_posix()}", None, error)
    best = next(((f, r) for f, r in scored if _confident(r)), None) or max(scored, key=lambda fr: _margin(fr[1]))
    f, r = best
    note = "" if _confident(r) else f"no confident image among the first {len(files)}: widest margin taken"
    return _probe(f, f"images/{f.relative_to(app.images).as_posix()}", r, note)


def _explicit(app: App, cache: HashCache, state_dir: Path | None) -> Probe:
    if not app.probe.is_file():
        raise BuildError(f"app.health.probe not found: {app.probe}")
    results, error = _references(app, [app.probe], cache, state_dir)
    return _probe(app.probe, app.probe.name, results[0], error)


def _probe(image: Path, source: str, ref: dict | None, note: str) -> Probe:
    path = f"health/probe{image.suffix.lower()}"
    if ref is None:
        return Probe(image, path, source, None, note=note)
    index, label, score = ref["topk"][0]
    return Probe(image, path, source, (int(index), str(label)), float(score), note)


def _candidates(app: App) -> list[Path]:
    if app.images is None or not app.images.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(app.images):  # the order the bundle and the agent walk in
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for fn in sorted(filenames):
            p = Path(dirpath, fn)
            if not fn.startswith(".") and fn.lower().endswith(IMAGE_EXTENSIONS) and p.stat().st_size <= MAX_PROBE_BYTES:
                found.append(p)
                if len(found) == CANDIDATES:
                    return found
    return found


def _confident(ref: dict) -> bool:
    return ref["topk"][0][2] >= CONFIDENT and _margin(ref) >= MARGIN


def _margin(ref: dict) -> float:
    top = ref["topk"]
    return top[0][2] - (top[1][2] if len(top) > 1 else 0.0)


def _references(app: App, files: list[Path], cache: HashCache, state_dir: Path | None,
                stop_at_confident: bool = False) -> tuple[list[dict | None], str]:
    """The host's result per file (None where it has none) and, if the host could not run, why."""
    onnx = app.models.get("onnx")
    if onnx is None or not onnx.is_file():
        return [None] * len(files), "no app.models.onnx for the host's reference: the check only needs a top-1"
    keys = _keys(app, onnx, files, cache)
    store = state_dir / "health" if state_dir is not None else None
    with _computing:
        results = [_cached(store, k) for k in keys]
        todo = [i for i, r in enumerate(results) if r is None]
        if stop_at_confident:  # only what comes before the first confident cached answer
            first = next((i for i, r in enumerate(results) if r is not None and _confident(r)), len(files))
            todo = [i for i in todo if i < first]
        error = ""
        if todo:
            fresh, error = classify(app, onnx, [files[i] for i in todo])
            for i, r in zip(todo, fresh, strict=True):
                results[i] = r
                if r is not None and store is not None:
                    _store(store, keys[i], r)
    return results, error


def _keys(app: App, onnx: Path, images: list[Path], cache: HashCache) -> list[str]:
    """Cache keys: the digests of model, image, labels and the agent's code, and the preprocessing."""

    def sha(p: Path | None) -> str | None:
        return cache.digest(p, p.stat()) if p is not None and p.is_file() else None

    agent = hostagent.AGENT_DIR
    code = sorted((p.relative_to(agent).as_posix(), sha(p)) for p in agent.rglob("*.py"))
    common = [sha(onnx), sha(app.labels), app.preprocess, app.batch, code]
    return [hashlib.sha256(json.dumps([sha(f), common], sort_keys=True).encode()).hexdigest()[:32] for f in images]


def _cached(store: Path | None, key: str) -> dict | None:
    if store is None:
        return None
    try:
        return json.loads((store / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None


def _store(store: Path, key: str, result: dict) -> None:
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / f".{key}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, store / f"{key}.json")


def classify(app: App, onnx: Path, files: list[Path]) -> tuple[list[dict | None], str]:
    """Each file's result record on the host (``hostagent``: onnx backend, fp32, top-2), and why the host
    classified nothing when it did not."""
    with hostagent.run(app, onnx, files, run_id="health-reference", topk=2) as r:
        by_name = {}
        for line in hostagent.lines(r.out / "results.jsonl"):
            rec = json.loads(line)
            if rec.get("ok"):
                by_name[rec["image"]] = {"topk": rec["topk"]}
        results = [by_name.get(name) for name in r.names]
        error = "" if any(results) else f"the host could not classify with app.models.onnx ({r.error()}): no reference"
    return results, error
