#!/usr/bin/env python3
"""Write deploy/data/efficientnet_lite0_reference.json: torch's logits for the demo photos.

Run once, where torch and efficientnet-lite-pytorch are installed (``pip install -e '.[models,torch]'``).
The file lets every ``deploy model demo`` and CI without torch check that the torch-free model
(deploy/models/efficientnet.py) gives torch's answer: per photo, the top-5 class indices and their
logits, with the JPEG's sha256 (the reference applies only to the same bytes) and the checkpoint's.
Inputs are made by the agent's own preprocessing (agent.preprocess, reference decode path).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent import preprocess as agent_pre  # noqa: E402
from deploy import models  # noqa: E402
from deploy.release.bundle import file_sha256  # noqa: E402


def main() -> int:
    import torch

    photos = models.demo_photos()
    cfg = agent_pre.resolve(models.DEMO_PREPROCESS, (None, *models.DEMO_INPUT_SHAPE[1:]), "float32", "NCHW")
    pre = agent_pre.Preprocessor(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        batch = []
        for name, data in photos.items():
            path = Path(tmp) / name
            path.write_bytes(data)
            batch.append(pre.reference(str(path))[0])
    model = models.efficientnet_lite0()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.stack(batch))).numpy()
    weights = models.lite0_weights()
    out = {
        "about": "torch's EfficientNet-Lite0 logits on the demo photos; made by scripts/make_model_reference.py",
        "torch": torch.__version__,
        "weights": weights.name,
        "weights_sha256": file_sha256(weights),
        "preprocess": models.DEMO_PREPROCESS,
        "photos": {},
    }
    for (name, data), row in zip(photos.items(), logits, strict=True):
        top5 = [int(i) for i in (-row).argsort(kind="stable")[:5]]
        out["photos"][name] = {
            "jpeg_sha256": hashlib.sha256(data).hexdigest(),
            "top5": top5,
            "logits": [float(row[i]) for i in top5],
        }
    dest = models.DEMO_REFERENCE
    dest.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {dest.relative_to(ROOT)} ({len(photos)} photos, torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
