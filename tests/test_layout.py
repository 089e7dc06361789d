"""The house rules, checked: short functions and modules, no import circles, no borrowed private names, and
each folder imports only what its place allows.

See docs/ARCHITECTURE.md ("The house"): ``cli -> ops -> {release, link} -> ground``, ``cli -> analysis ->
ground``; nothing imports ``cli/``; ``ops/X.py`` exists exactly when ``board/X.py`` has handlers;
``release/`` and ``analysis/`` never import ``link/`` or ``ops/``; only ``cli/tools.py`` imports
``sandbox/`` and ``models/``.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 60
MAX_MODULE_LINES = 600
# the simulated vendor runtimes mirror the vendors' module layout (one big `acl`/`magicmind` namespace each)
VENDOR_RUNTIMES = ("deploy/sandbox/ascend/runtime", "deploy/sandbox/cambricon/runtime")
GROUND = {"deploy", "deploy.errors", "deploy.targets", "deploy.proc", "deploy.fleet", "deploy.hostagent",
          "deploy.__main__"}
GROUND_PACKAGES = {"inventory"}  # the typed inventory: too big for one module, ground all the same
FOLDERS = ("cli", "ops", "link", "release", "analysis", "board", "sandbox", "models", "testing", "data")


def sources(*folders: str) -> list[Path]:
    return [p for f in folders for p in sorted((REPO / f).rglob("*.py")) if "__pycache__" not in p.parts]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(path: Path) -> list[str]:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return parts if path.name == "__init__.py" else parts[:-1]


def import_nodes(path: Path) -> list[tuple[str, str | None]]:
    """(absolute module, imported name or None) for every import in the file, function bodies included."""
    package = _package(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            found += [(mod, a.name) for a in node.names]
    return found


def imports(path: Path) -> set[str]:
    """Absolute module names this file imports (relative imports resolved against its package)."""
    found = set()
    for mod, name in import_nodes(path):
        found.add(mod)
        if name:
            found.add(f"{mod}.{name}")
    return found


def _modules() -> dict[str, Path]:
    return {module_name(p): p for p in sources("deploy", "agent")}


def _edges() -> dict[str, set[str]]:
    """module -> the project modules it imports (a ``from pkg import mod`` counts as mod)."""
    mods = _modules()
    edges = {}
    for name, path in mods.items():
        deps = set()
        for mod, imported in import_nodes(path):
            target = f"{mod}.{imported}" if imported and f"{mod}.{imported}" in mods else mod
            if target in mods and target != name:
                deps.add(target)
        edges[name] = deps
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def folder(module: str) -> str:
    """``cli``, ``ops``, ... for a module under deploy/, ``ground`` for deploy's own top level (and the inventory)."""
    parts = module.split(".")
    if parts[0] != "deploy":
        return parts[0]
    return parts[1] if len(parts) > 1 and parts[1] in FOLDERS else "ground"


# ---------------------------------------------------------------- size


def test_no_function_over_60_lines():
    long = []
    for path in sources("deploy", "agent"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def test_no_module_over_600_lines_outside_the_simulated_vendor_runtimes():
    big = [f"{p.relative_to(REPO)} ({n})" for p in sources("deploy", "agent")
           if not str(p.relative_to(REPO)).startswith(VENDOR_RUNTIMES) and (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not big, big


# ---------------------------------------------------------------- circles and private names


def test_no_import_circle_between_files():
    assert not _cycles(_edges())


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_takes_another_modules_private_name():
    """``from x import _name`` and ``module._name`` on an imported module: make it public or move it."""
    mods = _modules()
    bad = []
    for name, path in mods.items():
        aliases = {}
        for mod, imported in import_nodes(path):
            if imported and imported.startswith("_") and not imported.startswith("__") and mod in mods and mod != name:
                if f"{mod}.{imported}" in mods and mod == name.rpartition(".")[0]:
                    continue  # a package's private module, used by its siblings (the vendor runtimes' layout)
                bad.append(f"{name}: from {mod} import {imported}")
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases.update({(a.asname or a.name.split(".")[0]): a.name for a in node.names if a.name in mods})
            elif isinstance(node, ast.ImportFrom):
                for mod, imported in import_nodes(path):
                    if imported and f"{mod}.{imported}" in mods:
                        aliases[imported] = f"{mod}.{imported}"
                break
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and aliases[node.value.id] != name):
                bad.append(f"{name}: {node.value.id}.{node.attr} ({aliases[node.value.id]})")
    assert not bad, sorted(set(bad))


# ---------------------------------------------------------------- the folder rules


def _host_imports(path: Path) -> set[str]:
    """The folders of the project modules this file imports (ground excluded: everyone may)."""
    mods = _modules()
    return {folder(m) for m in imports(path) if m in mods and m.startswith("deploy")} - {"ground"}


ALLOWED = {
    "ground": set(),
    "link": {"link", "board"},
    "release": {"release", "board"},
    "analysis": {"analysis"},
    "ops": {"ops", "release", "link", "board"},
    "cli": {"cli", "ops", "release", "link", "analysis", "board", "sandbox", "models"},
    "models": {"models", "release"},
    "sandbox": {"sandbox", "release"},
}


def test_each_folder_imports_only_what_its_place_allows():
    bad = []
    for path in sources("deploy"):
        where = folder(module_name(path))
        if where not in ALLOWED or path.name == "__main__.py":
            continue
        extra = _host_imports(path) - ALLOWED[where] - {where}
        if extra:
            bad.append(f"{path.relative_to(REPO)} ({where}) imports {sorted(extra)}")
    assert not bad, bad


def test_nothing_imports_the_command_face():
    for path in sources("deploy", "agent"):
        if folder(module_name(path)) != "cli" and path.name != "__main__.py":  # `python -m deploy` is the face
            assert not [m for m in imports(path) if m == "deploy.cli" or m.startswith("deploy.cli.")], path


def test_only_cli_tools_imports_sandbox_and_models():
    for path in sources("deploy/cli"):
        if path.name != "tools.py":
            assert not [m for m in imports(path) if m.startswith(("deploy.sandbox", "deploy.models"))], path


def test_only_the_command_face_prints_or_imports_rich():
    for path in sources("deploy"):
        if folder(module_name(path)) in ("cli", "testing", "sandbox", "models", "board"):
            continue
        assert not [m for m in imports(path) if m == "rich" or m.startswith("rich.")], path


def test_an_ops_module_exists_exactly_for_each_board_module_with_handlers():
    handlers = set()
    for path in sources("deploy/board"):
        if any(isinstance(n, ast.FunctionDef) and n.name.startswith("op_") for n in ast.parse(path.read_text()).body):
            handlers.add(path.stem)
    ops = {p.stem for p in sources("deploy/ops")} - {"__init__"}
    assert ops == handlers, (sorted(ops - handlers), sorted(handlers - ops))


def test_the_top_of_deploy_is_the_ground_only():
    top = {module_name(p) for p in (REPO / "deploy").glob("*.py")}
    assert top == GROUND, sorted(top ^ GROUND)
    packages = {p.name for p in (REPO / "deploy").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert packages == set(FOLDERS) | GROUND_PACKAGES, sorted(packages ^ (set(FOLDERS) | GROUND_PACKAGES))


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
