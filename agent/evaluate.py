"""Top-1 .. top-5 accuracy against a label file, written as ais_bench's ``result.json``.

The label file has lines ``NAME.JPEG LABEL`` (ImageNet ``val_label.txt``); as in ModelZoo's
``imagenet_acc_eval.py`` an image is matched by its name up to the first dot, and a
1001-class model (background at index 0) is compared against LABEL + 1. Images listed in the
label file that failed to decode count as misses; images the label file does not list are
left out and counted under "Unlabelled images". Python 3.7 compatible.
"""

import os

TOPN = 5


class EvalError(ValueError):
    """The label file is missing or malformed."""


def image_key(name):
    """How an image is matched against the label file: its base name up to the first dot."""
    return os.path.basename(name).split(".")[0]


def load_ground_truth(path):
    """{image key: label int} from ``NAME LABEL`` lines (blank lines ignored)."""
    truth = {}
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) < 2:
                    raise EvalError(f"{path}:{lineno}: expected 'NAME LABEL', got {line.strip()!r}")
                try:
                    truth[image_key(parts[0])] = int(parts[-1])
                except ValueError:
                    raise EvalError(f"{path}:{lineno}: label {parts[-1]!r} is not an integer") from None
    except OSError as exc:
        raise EvalError(f"cannot read label file {path}: {exc}") from exc
    return truth


def inline_truth(entries):
    """{image key: label int} from the job's ``eval.truth`` (the host parsed the label file)."""
    if not isinstance(entries, dict):
        raise EvalError("eval.truth must be an object of image name -> label")
    truth = {}
    for name, label in entries.items():
        if isinstance(label, bool) or not isinstance(label, int):
            raise EvalError(f"eval.truth: label of {name!r} is not an integer")
        truth[image_key(name)] = label
    return truth


def evaluate(records, truth, classes=None, topn=TOPN):
    """Accuracy figures from result records ({"image", "ok", "topk"}) and ground truth."""
    offset = 1 if classes == 1001 else 0
    hits = [0] * topn
    counted = failed = unlabelled = 0
    for rec in records:
        key = image_key(rec["image"])
        if key not in truth:
            unlabelled += 1
            continue
        counted += 1
        if not rec.get("ok"):
            failed += 1
            continue
        want = truth[key] + offset
        for rank, entry in enumerate(rec.get("topk", [])[:topn]):
            if int(entry[0]) == want:
                hits[rank] += 1
                break
    acc, running = [], 0
    for h in hits:
        running += h
        acc.append(100.0 * running / counted if counted else 0.0)
    return {
        "images": counted,
        "classes": classes,
        "failed": failed,
        "unlabelled": unlabelled,
        "missing": len(set(truth) - {image_key(r["image"]) for r in records}),
        "top": acc,
    }


def seed003_files(records, truth, out_dir, classes=None, topn=TOPN):
    """Seed 003's three result files (magicmind_cloud infer_python), which its
    ``compute_top1_and_top5.py`` scores by comparing whole lines: ``eval_labels.txt`` (``[i]: label``),
    ``eval_result_1.txt`` (``[i]: top-1 index``) and ``eval_result_5.txt`` (five ``[i]: index`` lines per
    image, best first). Labelled images that were classified, in image-name order; returns their count."""
    import os

    offset = 1 if classes == 1001 else 0
    rows = sorted((r for r in records if r.get("ok") and image_key(r["image"]) in truth), key=lambda r: r["image"])
    labels, top1, top5 = [], [], []
    for i, rec in enumerate(rows):
        idx = [int(e[0]) - offset for e in rec.get("topk", [])[:topn]]
        idx += [idx[-1] if idx else -1] * (topn - len(idx))
        labels.append(f"[{i}]: {truth[image_key(rec['image'])]}")
        top1.append(f"[{i}]: {idx[0]}")
        top5.extend(f"[{i}]: {k}" for k in idx)
    for name, lines in (("eval_labels.txt", labels), ("eval_result_1.txt", top1), ("eval_result_5.txt", top5)):
        with open(os.path.join(out_dir, name), "w") as f:
            f.write("".join(line + "\n" for line in lines))
    return len(rows)


def result_json(metrics):
    """The ais_bench / imagenet_acc_eval.py ``result.json`` structure (values are strings)."""
    value = [
        {"key": "Number of images", "value": str(metrics["images"])},
        {
            "key": "Number of classes",
            "value": str(metrics["classes"] if metrics["classes"] is not None else ""),
        },
    ]
    for i, a in enumerate(metrics["top"]):
        value.append({"key": f"Top{i + 1} accuracy", "value": f"{a:.2f}%"})
    value.append({"key": "Failed images", "value": str(metrics["failed"])})
    value.append({"key": "Unlabelled images", "value": str(metrics["unlabelled"])})
    return {"title": "Overall statistical evaluation", "value": value}
