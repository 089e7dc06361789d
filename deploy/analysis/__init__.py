"""What the host makes of pulled runs: the fp32 reference and its comparison (``verify``), ``report.html``
(``htmlreport``), charts (``charts``) and label files (``labels``). No board, no terminal: these read and
write files under ``outputs/`` and return values; the command face shows them.
"""

from __future__ import annotations

import os
from pathlib import Path

# Files the analysis commands add to a pulled run directory (kept when they pull the run again).
HOST_FILES = ("verify.json", "verify.png", "bench.json", "bench.png", "report.html", "contact_sheet.png",
              "classes.png")


def write_whole(path: Path, data: bytes | str) -> Path:
    """Whole or absent: a temporary sibling renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
    return path
