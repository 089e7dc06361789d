"""Ground truth for ``deploy eval``: a ``NAME LABEL`` file (ImageNet ``val_label.txt``) read and checked on the
host before any board is touched, and the image ids the agent will give the images it runs."""

from __future__ import annotations

import os
from pathlib import Path

from agent import evaluate as agent_eval  # the agent's own parser (stdlib only): one reading of val_label.txt
from agent.formats import IMAGE_EXTENSIONS

from ..errors import UsageError


def image_files(root: Path) -> list[str]:
    """Image ids as the agent makes them: paths below the input root (a single file: its name)."""
    if root.is_file():
        return [root.name] if root.suffix.lower() in IMAGE_EXTENSIONS else []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            if not fn.startswith(".") and Path(fn).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath, fn).relative_to(root).as_posix())
    return found


def read_labels(path: Path, image_ids: list[str]) -> tuple[dict[str, int], int]:
    """The label file's entries for ``image_ids`` (image key -> label) and how many of its labels name
    images that are not there. A bad line, or no label for any image, is refused in one line (exit 2)."""
    try:
        truth = agent_eval.load_ground_truth(str(path))
    except agent_eval.EvalError as exc:
        raise UsageError(str(exc)) from None
    if not truth:
        raise UsageError(f"{path}: no labels in it (expected lines 'NAME.JPEG LABEL')")
    keys = {agent_eval.image_key(i) for i in image_ids}
    entries = {k: truth[k] for k in sorted(keys) if k in truth}
    if not entries:
        raise UsageError(f"{path}: none of its {len(truth)} labels names one of the {len(keys)} images")
    return entries, len(set(truth) - keys)
