"""Scores to top-k: softmax when needed, labels, and labelled copies of the images.

A model may end in a softmax (probabilities) or not (logits). :func:`probabilities` applies a
softmax only to rows that are not already a distribution (all values in [0, 1], sum 1), so the
reported scores are always probabilities. Python 3.7 compatible.
"""

import glob
import math
import os
import threading

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .formats import labelled_rel

FONT_PATHS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",)
FONT_GLOBS = ("/usr/share/fonts/truetype/*/*.ttf", "/usr/share/fonts/*/*.ttf", "/usr/share/fonts/**/*.ttf")


def is_distribution(rows, atol=1e-3):
    """True per row when the row already looks like probabilities."""
    rows = np.asarray(rows, dtype=np.float64)
    in_range = np.all((rows >= -atol) & (rows <= 1 + atol), axis=1)
    sums = np.abs(rows.sum(axis=1) - 1.0) <= max(atol, 1e-6 * rows.shape[1])
    return in_range & sums


def softmax(rows):
    rows = np.asarray(rows, dtype=np.float64)
    e = np.exp(rows - rows.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def probabilities(scores):
    """(n, classes) float64 probabilities from logits or probabilities (any trailing 1-dims dropped)."""
    rows = np.asarray(scores).reshape(len(scores), -1).astype(np.float64)
    if not np.all(np.isfinite(rows)):
        raise ValueError("model output contains NaN or infinity")
    done = is_distribution(rows)
    if done.all():
        return rows
    out = rows.copy()
    out[~done] = softmax(rows[~done])
    return out


def topk(probs, k):
    """Indices of the k largest values per row, best first: (n, k) ints."""
    probs = np.asarray(probs)
    k = min(k, probs.shape[1])
    if k == probs.shape[1]:
        idx = np.argsort(-probs, axis=1, kind="stable")
        return idx[:, :k]
    part = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(probs, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


class Labels:
    """Class names by model output index; 1001-class models (background at 0) shift by one."""

    def __init__(self, names=None):
        self.names = list(names or [])

    @classmethod
    def load(cls, path):
        if not path:
            return cls()
        with open(path, encoding="utf-8", errors="replace") as f:
            names = [line.rstrip("\r\n").strip() for line in f]
        while names and not names[-1]:
            names.pop()
        return cls(names)

    def offset(self, classes):
        return 1 if self.names and classes == len(self.names) + 1 else 0

    def name(self, index, classes):
        off = self.offset(classes)
        i = index - off
        if off and index == 0:
            return "background"
        if 0 <= i < len(self.names):
            return self.names[i]
        return str(index)


class Postprocessor:
    def __init__(self, labels, k):
        self.labels = labels
        self.k = k
        self.classes = None  # number of model classes, known after the first call

    def __call__(self, scores):
        """Model output (n, classes...) -> per row [[index, label, score], ...]."""
        return self.full(scores)[0]

    def full(self, scores):
        """(top-k rows as from a call, the (n, classes) probabilities they were taken from): the
        probabilities are what ``deploy verify`` compares with the host's fp32 reference."""
        probs = probabilities(scores)
        classes = self.classes = probs.shape[1]
        best = topk(probs, self.k)
        out = []
        for r in range(probs.shape[0]):
            row = []
            for i in best[r]:
                i = int(i)
                row.append([i, self.labels.name(i, classes), round(float(probs[r, i]), 6)])
            out.append(row)
        return out, probs


_font_lock = threading.Lock()
_fonts = {}


def find_font_path():
    """The sample's DejaVuSans-Bold, else any TTF on the system, else None."""
    for p in FONT_PATHS:
        if os.path.isfile(p):
            return p
    for pattern in FONT_GLOBS:
        hits = sorted(glob.glob(pattern, recursive=True))
        if hits:
            return hits[0]
    return None


def font(size):
    with _font_lock:
        if size not in _fonts:
            path = find_font_path()
            f = None
            if path:
                try:
                    f = ImageFont.truetype(path, size=size)
                except OSError:
                    f = None
            _fonts[size] = f or ImageFont.load_default()
        return _fonts[size]


def label_text(topk_row):
    return "".join(label_parts(topk_row))


def label_parts(topk_row):
    """The label as (class name, score) strings: drawn as two cached pieces (see draw_label)."""
    if not topk_row:
        return ("?", "")
    index, label, score = topk_row[0]
    return (str(label), f" ({score:.1%})")


_bands = {}
_BANDS_MAX = 4096  # ~1000 class names + ~1000 scores per font size; a few KB each


def _text_width(f, text):
    try:
        return int(math.ceil(f.getlength(text)))
    except AttributeError:  # Pillow < 8
        return f.getsize(text)[0]


def _band(text, size, first, last):
    """``text`` in yellow on a black band (cached): rendering glyphs costs ~0.25 ms a label,
    a paste of the cached band ~10 us."""
    key = (text, size, first, last)
    band = _bands.get(key)
    if band is None:
        f = font(size)
        pad = max(2, size // 4)
        try:
            ascent, descent = f.getmetrics()
        except AttributeError:  # the bitmap default font
            ascent, descent = _text_height(f), 0
        left = pad if first else 0
        width = left + _text_width(f, text) + (pad if last else 0)
        band = Image.new("RGB", (max(1, width), ascent + descent + 2 * pad), (0, 0, 0))
        ImageDraw.Draw(band).text((left, pad), text, font=f, fill=(255, 255, 0))
        if len(_bands) >= _BANDS_MAX:
            _bands.clear()
        _bands[key] = band
    return band


def _text_height(f):
    try:
        x0, y0, x1, y1 = f.getbbox("Ag")
        return y1
    except AttributeError:
        return f.getsize("Ag")[1]


def draw_label(im, text, inplace=False):
    """``im`` (RGB) with ``text`` on a dark band at the top-left: a copy, or ``im`` itself when
    ``inplace``. ``text`` is a string or a sequence of strings drawn one after the other (the
    pieces are cached, so a class name and a score are each rendered once)."""
    if im.mode != "RGB":
        im = im.convert("RGB")
    elif not inplace:
        im = im.copy()
    size = max(12, min(32, im.size[1] // 16))
    parts = [text] if isinstance(text, str) else [p for p in text if p] or ["?"]
    x = 0
    for i, part in enumerate(parts):
        band = _band(part, size, i == 0, i == len(parts) - 1)
        im.paste(band, (x, 0))
        x += band.size[0]
        if x >= im.size[0]:
            break
    return im


def labelled_path(out_dir, rel):
    """Where the labelled copy of image ``rel`` goes: labelled/<rel>, with .jpg added if needed, a name too
    long for the filesystem cut (``formats.labelled_rel``)."""
    return os.path.join(out_dir, "labelled", labelled_rel(rel))


def save_labelled(im, text, path, quality=80, inplace=False):
    """Draw the label (on ``im`` itself if ``inplace``) and write a JPEG atomically (through a short temporary
    name: ``<name>.part`` would not fit beside a 255-byte name)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".part-{os.getpid()}-{threading.get_ident()}")
    draw_label(im, text, inplace).save(tmp, "JPEG", quality=quality)
    os.replace(tmp, path)


def to_image(array_hwc):
    return Image.fromarray(np.asarray(array_hwc, dtype=np.uint8), "RGB")
