"""Board facts, and what in them does not match the board's target profile (``deploy check``).

Facts are read in one round trip by the board-side helper, with the app's ``env.sh``
sourced: whether ``import acl`` works is only meaningful in the environment the agent
will get (the CANN ``set_env.sh`` is what makes it importable).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..board import protocol
from ..inventory import Board, Inventory
from ..link.remote import call
from ..targets import Target, for_board
from ..targets import get as get_target

if TYPE_CHECKING:  # the type only: paramiko is imported when a connection is made
    from ..link.ssh import Connection

FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
MIN_FREE_BYTES = 512 * 1024 * 1024  # a release with its site/ is ~150-250 MB; two must fit during a push


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str
    severity: str = "error"  # "error" fails the check; "warning" is shown but does not


def gather(inv: Inventory, board: Board, conn: Connection, target: Target) -> protocol.Facts:
    """The board's facts with the app's env.sh sourced, probing ``import acl`` for acl targets
    and every interpreter candidate (so `check` can say which exist and which one runs)."""
    if target.backend == "magicmind":
        probes = ["cnmon", "magicmind"]
    else:
        probes = ["npu-smi"] + (["acl"] if target.backend == "acl" else [])
    pythons = list(conn.endpoint.pythons)
    if inv.app.own is not None and "python3" not in pythons:
        pythons.append("python3")  # what `python3` on the board's PATH is, beside the one a command gets
    req = protocol.FactsRequest(probe=probes, pythons=pythons, cann_env=list(target.cann_env),
                                files=list(FONTS) if inv.app.own is not None else [])
    return call(conn, "facts", req, app=inv.app.name)


def own_app_findings(app, facts: protocol.Facts) -> list[Finding]:
    """An own app: which interpreter ``python3`` at the start of its command becomes, and the fonts Huawei's
    samples draw their labels with (``ImageFont.truetype("/usr/share/fonts/truetype/dejavu/...")``)."""
    out = []
    words = app.own.command.split()
    if words and words[0] in ("python3", "python"):
        seen = next(((p, v) for n, p, v in facts.pythons if n == "python3" and p), None)
        other = f"; `python3` on the board's PATH is {seen[0]} ({seen[1] or '?'})" if seen and seen[0] != facts.python_exe else ""
        out.append(Finding(f"{words[0]} in app.command", True, f"runs {facts.python_exe} (Python {facts.python}), "
                                                                f"the interpreter deploy found{other}"))
    missing = [f for f in FONTS if not facts.files.get(f)]
    out.append(Finding("fonts", not missing, f"missing: {', '.join(missing)} (Debian/Ubuntu package fonts-dejavu-core)"
                       if missing else f"present: {', '.join(FONTS)}", "warning"))
    return out


def _python_findings(board: Board, facts: protocol.Facts) -> list[Finding]:
    """Which interpreter runs our code and why; its version against the profile's.

    A candidate below 3.7 never gets here: the board code refuses it in one line before
    answering. A sandbox board may stand in with another version (it says which); a real
    board must match the profile, whose wheels are built for that version.
    """
    profile = get_target(board.target)
    how = f"set by boards.{board.name}.python" if board.python else "first found of the target's candidates"
    seen = [f"{n} -> {p} ({v or '?'})" for n, p, v in facts.pythons if p and p != facts.python_exe]
    others = f"; also on the board, not used: {', '.join(seen)}" if seen else ""
    new_enough = tuple(int(x) if x.isascii() and x.isdigit() else -1 for x in facts.python_mm.split(".")) >= (3, 7)
    out = [Finding("interpreter", new_enough, f"{facts.python_exe} (Python {facts.python}), {how}{others}")]
    if not profile.python or facts.python_mm == profile.python:
        return out
    if board.sandbox:
        detail = (f"simulated board: Python {facts.python} stands in for the {profile.name}'s {profile.python} "
                  f"(no CPython {profile.python} on this machine); releases are built for {facts.python_mm}")
        return [*out, Finding("python version", True, detail, "warning")]
    detail = (f"board runs Python {facts.python}, target {profile.name} builds for {profile.python} "
              f"(set boards.{board.name}.python to a {profile.python} interpreter, or change target)")
    return [*out, Finding("python version", False, detail)]


def npu_name(npu_smi_output: str) -> str | None:
    """The chip name from `npu-smi info` ("310B4" in ``| 0  310B4  | OK ...``)."""
    m = re.search(r"^\|\s*\d+\s+(\d{3}[A-Z]?\d*)\s+\|", npu_smi_output, re.M)
    return m.group(1) if m else None


# MagicMind arch -> the card name cnmon shows (MLU370-X4, MLU370-S4 ...)
_MLU_CARDS = {"mtp_372": "MLU370", "mtp_322": "CE3226", "mtp_290": "MLU290", "mtp_270": "MLU270"}


def mlu_cards(cnmon_output: str) -> list[str]:
    """The card names in `cnmon`'s table (``| 0     /   MLU370-X4    v1.1.6 | ...``)."""
    return re.findall(r"^\|\s*\d+\s+\S+\s+((?:MLU|CE)\S+)\s+\S+\s+\|", cnmon_output, re.M)


def _magicmind_findings(target: Target, facts: protocol.Facts) -> list[Finding]:
    """import magicmind (with the Neuware env sourced) and the cards cnmon lists against the target."""
    mm = facts.magicmind or protocol.ImportProbe()
    detail = "; ".join(mm.detail) or "no output"
    env = {"env.sh": "the app's env.sh", "": "no release yet and no Neuware env script found"}.get(mm.sourced, mm.sourced)
    out = [Finding("import magicmind", mm.ok, f"with {env} sourced: {detail}" if mm.sourced else f"{env}: {detail}")]
    if facts.cnmon is None:
        return [*out, Finding("cnmon", False, "cnmon not on PATH: no Cambricon driver (or the container lacks "
                                               "-v /usr/bin/cnmon:/usr/bin/cnmon)")]
    cards = mlu_cards(facts.cnmon.output)
    want = _MLU_CARDS.get(target.mm_arch or "", "MLU")
    ok = facts.cnmon.ok and bool(cards) and all(c.startswith(want) for c in cards)
    seen = ", ".join(f"{i}: {c}" for i, c in enumerate(cards)) or "no card"
    return [*out, Finding("cnmon", ok, f"cnmon lists {seen}; target {target.name} models are built for {want} "
                                       f"({target.mm_arch})")]


def evaluate(board: Board, target: Target, facts: protocol.Facts) -> list[Finding]:
    out = [
        Finding(
            "arch",
            facts.arch == target.arch,
            f"board is {facts.arch}, target {target.name} needs {target.arch}",
        )
    ]
    out += _python_findings(board, facts)
    free = facts.free_bytes
    out.append(Finding("free disk", free >= MIN_FREE_BYTES, f"{free / 2**20:.0f} MiB free in {facts.home}"))
    if target.backend == "magicmind":
        out += _magicmind_findings(target, facts)
    if target.backend == "acl":
        acl = facts.acl or protocol.ImportProbe()
        detail = "; ".join(acl.detail) or "no output"
        env = {"env.sh": "the app's env.sh", "": "no release yet and no CANN set_env.sh found"}.get(acl.sourced, acl.sourced)
        out.append(Finding("import acl", acl.ok, f"with {env} sourced: {detail}" if acl.sourced else f"{env}: {detail}"))
        smi = facts.npu_smi
        if smi is None:
            out.append(Finding("npu-smi", True, "npu-smi not on PATH (the original Atlas 200 DK often lacks it)", "warning"))
        else:
            name = npu_name(smi.output)
            soc = f"Ascend{name}" if name else None
            out.append(
                Finding(
                    "soc version",
                    soc == target.soc_version,
                    f"npu-smi reports {soc or 'no chip'}; target {target.name} models are built for {target.soc_version}",
                )
            )
    return out


def check(inv: Inventory, board: Board, conn: Connection) -> tuple[protocol.Facts, list[Finding]]:
    target = for_board(board)
    facts = gather(inv, board, conn, target)
    found = evaluate(board, target, facts)
    return facts, found + (own_app_findings(inv.app, facts) if inv.app.own is not None else [])


# ---------------------------------------------------------------- the board's Python, cached


def board_python(inv: Inventory, board: Board, conn: Connection, target: Target) -> str:
    """The board's CPython "major.minor": fixed by the target profile, else read off the board once and cached."""
    if target.python:
        return target.python
    cache = inv.state_dir / "facts" / f"{board.name}.json"
    try:
        return json.loads(cache.read_text())["python_mm"]
    except (OSError, ValueError, KeyError):
        pass
    return remember_facts(inv, board, call(conn, "facts", protocol.FactsRequest()))


def remember_facts(inv: Inventory, board: Board, facts: protocol.Facts) -> str:
    cache = inv.state_dir / "facts" / f"{board.name}.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({**facts.to_json(), "python_mm": facts.python_mm}, indent=1))
    return facts.python_mm
