"""The health check, host side: which probe a release ships, the host's own answer for it, and the verdict.

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
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import agent

from .board import protocol
from .errors import BuildError, HealthCheckFailed, RemoteError
from .inventory import App
from .remote import REPLY_TIMEOUT, session

if TYPE_CHECKING:
    from .bundle import HashCache
    from .ssh import Connection

SPEC = "health/health.json"
CANDIDATES = 16
MAX_PROBE_BYTES = 2 << 20
CONFIDENT = 0.5
MARGIN = 0.2
SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_AGENT = Path(agent.__file__).resolve().parent  # the agent this host ships (bundle.agent_source)
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


@dataclass(frozen=True)
class HealthResult:
    """One board's verdict; ``ran`` is False when nothing ran (skipped, or passed on an earlier push)."""

    status: str  # passed | failed | skipped
    ran: bool = False
    seconds: float = 0.0  # what the check added to the push, round trip included
    agent_seconds: float = 0.0
    probe: str = ""
    source: str = ""
    expected: list | None = None
    got: list | None = None
    error: str | None = None
    reason: str = ""
    current: str | None = None
    pruned: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"status": self.status, "ran": self.ran, "seconds": round(self.seconds, 3),
                "agent_seconds": round(self.agent_seconds, 3), "probe": self.source or self.probe,
                "expected": self.expected, "got": self.got, "error": self.error, "reason": self.reason}


# ---------------------------------------------------------------- the probe and its reference


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
            if not fn.startswith(".") and fn.lower().endswith(SUFFIXES) and p.stat().st_size <= MAX_PROBE_BYTES:
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

    code = sorted((p.relative_to(_AGENT).as_posix(), sha(p)) for p in _AGENT.rglob("*.py"))
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
    """Each file's result record on the host (``python -m agent run``, onnx backend, fp32, top-2), and
    the agent's error line when it classified nothing."""
    with tempfile.TemporaryDirectory(prefix="deploy-health-") as tmp:
        inputs = Path(tmp, "in")
        inputs.mkdir()
        for i, f in enumerate(files):  # numbered links: each result maps back to its file
            (inputs / f"{i:04d}{f.suffix.lower()}").symlink_to(f.resolve())
        job = {"v": 1, "run_id": "health-reference", "mode": "run", "release": tmp, "out_dir": f"{tmp}/out",
               "model": str(onnx.resolve()), "backend": "onnx", "preprocess": app.preprocess,
               "labels": str(app.labels.resolve()) if app.labels else None, "inputs": [str(inputs)],
               "batch": app.batch, "topk": 2, "labelled": False}
        Path(tmp, "job.json").write_text(json.dumps(job))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_AGENT.parent),
                                                                         os.environ.get("PYTHONPATH")]))}
        r = subprocess.run([sys.executable, "-m", "agent", "run", "--job", f"{tmp}/job.json"], env=env, cwd=tmp,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
        out = Path(tmp, "out")
        by_name = {}
        for line in _lines(out / "results.jsonl"):
            rec = json.loads(line)
            if rec.get("ok"):
                by_name[rec["image"]] = {"topk": rec["topk"]}
        results = [by_name.get(f"{i:04d}{f.suffix.lower()}") for i, f in enumerate(files)]
        error = "" if any(results) else _agent_error(out, r)
    return results, error


def _lines(path: Path) -> list[str]:
    try:
        return [ln for ln in path.read_text().splitlines() if ln.strip()]
    except OSError:
        return []


def _agent_error(out: Path, r: subprocess.CompletedProcess) -> str:
    try:
        error = json.loads((out / "summary.json").read_text()).get("error")
    except (OSError, ValueError, AttributeError):
        error = None
    if not error:
        tail = [ln for ln in (r.stderr or "").splitlines() if ln.strip()]
        error = tail[-1] if tail else f"exit status {r.returncode}"
    return f"the host could not classify with app.models.onnx ({str(error).splitlines()[0][:300]}): no reference"


# ---------------------------------------------------------------- the check on a board


def skipped(reason: str) -> HealthResult:
    return HealthResult(status="skipped", reason=reason)


def check(conn: Connection, app: App, board: str, release: str, keep: int) -> HealthResult:
    """Run the board's check of ``release`` (just made current); HealthCheckFailed when it fails.

    The board has switched back (or removed ``current``) before it answers "failed".
    """
    t0 = time.perf_counter()
    req = protocol.HealthRequest(app=app.name, release=release, timeout=float(app.health_timeout), keep=keep)
    try:
        with session(conn, "health", req, app=app.name) as c:
            c.chan.settimeout(max(REPLY_TIMEOUT, app.health_timeout + 30.0))  # the agent may take its timeout
            reply = c.read(protocol.HealthReply)
            c.close()
    except RemoteError as exc:
        raise HealthCheckFailed(f"{board}: release {release} is current but its health check gave no verdict "
                                f"({_one_line(str(exc))}); if it failed there the board switched back by itself "
                                f"(see `deploy releases {board}`); push again to check it") from None
    result = HealthResult(status=reply.status, ran=reply.status != "skipped", seconds=time.perf_counter() - t0,
                          agent_seconds=reply.seconds, probe=reply.probe, source=reply.source,
                          expected=reply.expected, got=reply.got, error=reply.agent_error, reason=reply.reason,
                          current=reply.current, pruned=list(reply.pruned))
    if result.status == "failed":
        raise HealthCheckFailed(failure_line(board, release, result), result)
    return result


def failure_line(board: str, release: str, r: HealthResult) -> str:
    """One line: the board, the probe, expected against got (or the agent's error), where the board is now."""
    if r.got is not None and r.expected is not None:
        what = (f"top-1 {r.got[0]} {str(r.got[1])!r} ({float(r.got[2]):.2f}), "
                f"expected {r.expected[0]} {str(r.expected[1])!r}")
    else:
        what = _one_line(r.error or "the agent classified nothing")
    where = f"rolled back to {r.current}" if r.current else "no earlier release to roll back to: current removed"
    return f"{board}: release {release} failed its health check: probe {r.source or r.probe}: {what}; {where}"


def _one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else text)[:300]
