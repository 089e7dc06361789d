"""The house rules, checked: short functions, and each folder imports only what its place allows.

See docs/ARCHITECTURE.md ("What may import what").
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 60


def sources(*folders: str) -> list[Path]:
    return [p for f in folders for p in sorted((REPO / f).rglob("*.py")) if "__pycache__" not in p.parts]


def imports(path: Path) -> set[str]:
    """Absolute module names this file imports (relative imports resolved against its package)."""
    package = path.relative_to(REPO).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            found.update([mod] + [f"{mod}.{a.name}" for a in node.names])
    return found


def test_no_function_over_60_lines():
    long = []
    for path in sources("deploy", "agent"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def test_the_core_never_imports_a_tool_folder():
    tools = ("deploy.sandbox", "deploy.models", "deploy.testing")
    for path in (REPO / "deploy").glob("*.py"):
        if path.name == "commands.py":  # the command layer calls the tools for `deploy sandbox` / `deploy model`
            continue
        bad = [m for m in imports(path) if m.startswith(tools)]
        assert not bad, (path.name, bad)


def test_model_tooling_runs_the_simulated_atc_but_never_imports_the_sandbox():
    for path in sources("deploy/models"):
        assert not [m for m in imports(path) if m.startswith(("deploy.sandbox", "deploy.testing"))], path


def test_nothing_in_deploy_imports_the_test_support():
    for path in sources("deploy"):
        if "testing" not in path.relative_to(REPO).parts:
            assert not [m for m in imports(path) if m.startswith("deploy.testing")], path


def test_board_code_and_agent_stay_on_their_side():
    for path in sources("deploy/board"):
        outside = [m for m in imports(path) if not m.startswith("deploy.board")]
        assert not [m for m in outside if m.startswith(("deploy", "agent", "paramiko", "rich", "yaml"))
                    and not m.startswith("deploy_board")], path
    for path in sources("agent"):
        assert not [m for m in imports(path) if m == "deploy" or m.startswith("deploy.")], path
