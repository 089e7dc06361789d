"""Where the vendors' own clients are: checkouts outside the repo, named by the environment.

Huawei's Ascend/samples (commit fc2aea93) and Cambricon's magicmind_cloud (commit dc085c19) are public code
that neither this project nor ../shared may contain. A test that runs them finds the checkout through
``ASCEND_SAMPLES`` / ``MAGICMIND_CLOUD`` and skips with one line saying how to get it when unset
(``../shared/conformance/*/README.md``: the search tool's fetch, then ``git archive`` into a folder outside
the repo).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ASCEND = ("ASCEND_SAMPLES", "Huawei's Ascend/samples at fc2aea93", "../shared/conformance/ascend/README.md",
          "python/common/acllite")
CAMBRICON = ("MAGICMIND_CLOUD", "Cambricon's magicmind_cloud at dc085c19", "../shared/conformance/cambricon/README.md",
             "buildin/cv/utils")


def _path(spec) -> Path | None:
    value = os.environ.get(spec[0])
    return Path(value).expanduser().resolve() if value else None


def checkout(spec) -> Path:
    """The checkout's root, or skip in one line (unset, or not a checkout of those paths)."""
    var, what, how, probe = spec
    root = _path(spec)
    if root is None:
        pytest.skip(f"{var} is not set: these tests run {what}, unmodified; get a checkout as {how} says")
    if not (root / probe).is_dir():
        pytest.skip(f"{var}={root} holds no {probe}: not a checkout of {what} ({how})")
    return root


def ascend_samples() -> Path:
    return checkout(ASCEND)


def magicmind_cloud() -> Path:
    return checkout(CAMBRICON)


#: for paths computed at import time; the tests call :func:`ascend_samples` / :func:`magicmind_cloud` first
ASCEND_ROOT = _path(ASCEND) or Path("/nonexistent/ASCEND_SAMPLES")
CAMBRICON_ROOT = _path(CAMBRICON) or Path("/nonexistent/MAGICMIND_CLOUD")
