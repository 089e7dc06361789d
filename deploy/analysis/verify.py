"""``deploy verify``, host side: the source model's fp32 answer for the images, and how far a board's is from it.

A converted model can be quietly wrong on the board (fp16 rounding, a wrong AIPP mean, BGR for RGB, another
resize). The reference is what the app was built from: the app's ONNX model, fp32, on the host's ONNX
Runtime, with the agent's own preprocessing of ``app.preprocess``. Like the health check's reference it is
a ``python -m agent run`` subprocess (``deploy/hostagent.py``, shared by both): the same decode,
resize and normalisation the boards run, asked for whole probability vectors (``probs.jsonl``).

:class:`HostReference` starts that subprocess at once and is waited for only when a board's run is back, so
the two overlap: a verify costs about max(board run, host run), not their sum. :func:`compare` works on
any two probability tables, so every backend plugs in: whatever the board ran (ONNX Runtime, an ``.om`` on
pyACL with AIPP, ...) only has to write ``probs.jsonl``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import hostagent
from ..errors import RunError
from ..inventory import App

TOP5 = 5


@dataclass(frozen=True)
class Probs:
    """One side's answer: image id -> probability vector (numpy float64), and the images it failed on."""

    vectors: dict
    failed: dict[str, str] = field(default_factory=dict)  # image -> reason
    labels: dict[str, str] = field(default_factory=dict)  # image -> top-1 label
    seconds: float = 0.0


def load_probs(run_dir: Path, seconds: float = 0.0) -> Probs:
    """``probs.jsonl`` and ``results.jsonl`` of a run directory (the board's pulled run, or the host's)."""
    import numpy as np

    vectors, failed, labels = {}, {}, {}
    for line in hostagent.lines(run_dir / "results.jsonl"):
        rec = json.loads(line)
        if rec.get("ok"):
            labels[rec["image"]] = str(rec["topk"][0][1]) if rec.get("topk") else ""
        else:
            failed[rec["image"]] = f"{rec.get('kind')}: {rec.get('message')}"
    for line in hostagent.lines(run_dir / "probs.jsonl"):
        rec = json.loads(line)
        vectors[rec["image"]] = np.asarray(rec["probs"], dtype=np.float64)
    return Probs(vectors, failed, labels, seconds)


class HostReference:
    """The host's fp32 run over ``images``, started at construction in a thread; :meth:`result` waits for it."""

    def __init__(self, app: App, images: Path):
        onnx = app.models.get("onnx")
        if onnx is None or not onnx.is_file():
            raise RunError("verify needs app.models.onnx (the source model) for the host's fp32 reference")
        self.app, self.onnx, self.images = app, onnx, images
        self._done = threading.Event()
        self._result: Probs | None = None
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="verify-reference", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._classify()
        except Exception as exc:  # handed to every board that waits for it
            self._error = exc
        finally:
            self._done.set()

    def _classify(self) -> Probs:
        t0 = time.perf_counter()
        with hostagent.run(self.app, self.onnx, self.images, run_id="verify-reference", topk=TOP5, probs=True,
                           timeout=3600) as r:
            probs = load_probs(r.out, time.perf_counter() - t0)
            if not probs.vectors:
                raise RunError(f"the host's reference classified nothing with app.models.onnx ({r.error()})")
        return probs

    def result(self) -> Probs:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


@dataclass(frozen=True)
class ImageCheck:
    image: str
    agree: bool  # same top-1 class
    top5_overlap: float  # |top-5 board ∩ top-5 host| / 5
    max_abs: float  # max over classes of |p_board - p_host|
    mean_abs: float
    host: list  # [index, label, p] the host's top-1
    board: list  # [index, p] the board's top-1 (with the host's p of that class: where it stood)
    error: str = ""  # the board (or the host) failed on this image

    def to_json(self) -> dict:
        return {"image": self.image, "agree": self.agree, "top5_overlap": round(self.top5_overlap, 4),
                "max_abs_diff": self.max_abs, "mean_abs_diff": self.mean_abs, "host": self.host,
                "board": self.board, "error": self.error}


@dataclass(frozen=True)
class Verdict:
    """Overall figures of one board against the reference; ``passed``: agreement >= the threshold."""

    images: list[ImageCheck]
    agreement: float
    top5_overlap: float
    max_abs: float
    mean_abs: float
    min_agreement: float
    compared: int
    unmatched: list[str]  # images only one side has (e.g. the board's release has other images)
    host_seconds: float

    @property
    def passed(self) -> bool:
        return self.compared > 0 and self.agreement >= self.min_agreement

    @property
    def disagreeing(self) -> list[ImageCheck]:
        return [c for c in self.images if not c.agree]

    def to_json(self) -> dict:
        return {"passed": self.passed, "agreement": round(self.agreement, 6),
                "top5_overlap": round(self.top5_overlap, 6), "max_abs_diff": self.max_abs,
                "mean_abs_diff": self.mean_abs, "min_agreement": self.min_agreement, "compared": self.compared,
                "disagreeing": [c.image for c in self.disagreeing], "unmatched": self.unmatched,
                "host_seconds": round(self.host_seconds, 3), "images": [c.to_json() for c in self.images]}


def _align(a, b):
    """Vectors of one length: a 1001-class model's background column (index 0) is dropped against 1000."""
    if len(a) == len(b) + 1:
        return a[1:], b, 1, 0
    if len(b) == len(a) + 1:
        return a, b[1:], 0, 1
    if len(a) != len(b):
        raise RunError(f"the board's model has {len(b)} classes, the source model {len(a)}: not the same model")
    return a, b, 0, 0


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


def compare(host: Probs, board: Probs, min_agreement: float, labels: list[str] | None = None) -> Verdict:
    """Per image and overall: top-1 agreement, top-5 overlap, max and mean |Δ probability|."""
    import numpy as np

    names = sorted(set(host.vectors) | set(host.failed))
    board_names = set(board.vectors) | set(board.failed)
    checks, unmatched = [], sorted(board_names.symmetric_difference(names))
    for name in names:
        if name not in board_names:
            continue
        if name in host.failed:
            if name in board.failed:  # both refuse it (a broken file): consistent, not compared
                continue
            checks.append(ImageCheck(name, False, 0.0, 1.0, 1.0, [], [], f"host: {host.failed[name]}"))
            continue
        h = host.vectors[name]
        if name in board.failed or name not in board.vectors:
            best = int(np.argmax(h))
            checks.append(ImageCheck(name, False, 0.0, 1.0, 1.0, [best, host.labels.get(name, ""), _sig(h[best])], [],
                                     f"board: {board.failed.get(name, 'no probabilities')}"))
            continue
        a, b, ha, hb = _align(h, board.vectors[name])
        d = np.abs(a - b)
        ta, tb = np.argsort(-a, kind="stable")[:TOP5], np.argsort(-b, kind="stable")[:TOP5]
        checks.append(ImageCheck(
            image=name, agree=int(ta[0]) == int(tb[0]), top5_overlap=len(set(ta.tolist()) & set(tb.tolist())) / TOP5,
            max_abs=_sig(d.max()), mean_abs=_sig(d.mean()),
            host=[int(ta[0]) + ha, host.labels.get(name, ""), _sig(a[ta[0]])],
            board=[int(tb[0]) + hb, board.labels.get(name, ""), _sig(b[tb[0]])],
        ))  # fmt: skip
    n = len(checks)
    return Verdict(
        images=checks,
        agreement=sum(c.agree for c in checks) / n if n else 0.0,
        top5_overlap=sum(c.top5_overlap for c in checks) / n if n else 0.0,
        max_abs=max((c.max_abs for c in checks), default=0.0),
        mean_abs=_sig(sum(c.mean_abs for c in checks) / n) if n else 0.0,
        min_agreement=min_agreement, compared=n, unmatched=unmatched, host_seconds=host.seconds,
    )  # fmt: skip
