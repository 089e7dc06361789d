"""The user's own app in ``app:`` (``app.command`` set): its tree, globs, workdir, command, outputs, requirements,
health command and C/C++ build, as typed, frozen values checked where they are parsed. Loaded only for an
inventory that has an own app (every command pays for the inventory's import)."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .doc import Doc, path_value

DEFAULT_EXCLUDES = (".git/**", "**/.git/**", "**/__pycache__/**", "build/**")


PLACEHOLDERS = ("images", "model")


@dataclass(frozen=True)
class Build:
    """``app.build``: a C/C++ app built on the host for each board's target with CMake (seed 000)."""

    cmake: str  # the folder with CMakeLists.txt, relative to source
    artifacts: tuple[str, ...]  # what the build leaves in the tree (relative to source), checked
    dir: str = "build/intermediates/host"  # the build folder, relative to source (Huawei's samples' layout)


@dataclass(frozen=True)
class OwnApp:
    """The user's own app (``app.command`` set): a tree shipped with its layout kept, and what runs it.

    Paths inside the tree are '/'-separated and relative: ``workdir`` to ``source``, ``outputs`` to
    ``workdir`` (it may climb out of it, ``../out``, but never out of the tree)."""

    source: Path
    command: str
    workdir: str = "."
    outputs: str | None = None
    include: tuple[str, ...] = ("**",)
    exclude: tuple[str, ...] = DEFAULT_EXCLUDES
    requirements: Path | None = None
    follow_links: bool = False  # symlinks inside the tree are shipped as their targets' content
    health_command: str | None = None  # app.health.command: run after the switch (roll back on failure)
    health_expect: str | None = None  # app.health.expect: a regex its output must match
    build: Build | None = None  # app.build: built on the host per target (C/C++ apps)

    @property
    def outputs_in_tree(self) -> str | None:
        """``outputs`` as a path from the tree's root (``src`` + ``../out`` = ``out``)."""
        if self.outputs is None:
            return None
        return posixpath.normpath(posixpath.join(self.workdir, self.outputs))




def parse_own(doc: Doc, node: yaml.Node, m: dict, base: Path, models: dict) -> OwnApp:
    """The user's own app: ``source`` (a folder), ``include``/``exclude`` globs, ``workdir``, ``command``,
    ``outputs``, ``requirements``, ``follow_links``, and ``health: {command, expect}``."""
    if "source" not in m:
        raise doc.fail(node, "app.source", "required with app.command: the folder of your app's tree")
    source = path_value(doc, m["source"][1], "app.source", base)
    if not source.is_dir():
        raise doc.fail(m["source"][1], "app.source", f"not a folder: {source}")
    workdir = _tree_path(doc, m["workdir"][1], "app.workdir", None) if "workdir" in m else "."
    if not (source / workdir).is_dir() and "build" not in m:  # a build may make it (out/)
        raise doc.fail(m["workdir"][1], "app.workdir", f"not a folder of app.source: {workdir}")
    outputs = None
    if "outputs" in m:
        outputs = doc.string(m["outputs"][1], "app.outputs")
        _tree_path(doc, m["outputs"][1], "app.outputs", posixpath.join(workdir, outputs))
    command = doc.string(m["command"][1], "app.command")
    _check_command(doc, m["command"][1], "app.command", command, models)
    health = _own_health(doc, m, models)
    return OwnApp(
        source=source, command=command, workdir=workdir, outputs=outputs,
        include=_globs(doc, m["include"][1], "app.include") if "include" in m else ("**",),
        exclude=DEFAULT_EXCLUDES + (_globs(doc, m["exclude"][1], "app.exclude") if "exclude" in m else ()),
        requirements=_requirements(doc, m["requirements"][1], source) if "requirements" in m else None,
        follow_links=doc.boolean(m["follow_links"][1], "app.follow_links") if "follow_links" in m else False,
        build=_build(doc, m["build"][1], source) if "build" in m else None,
        **health,
    )  # fmt: skip


def _build(doc: Doc, node: yaml.Node, source: Path) -> Build:
    """app.build: ``{cmake: src, artifacts: [out/main], dir: build/intermediates/host}``."""
    bm = doc.mapping(node, "app.build")
    doc.check_keys(bm, {"cmake", "artifacts", "dir"}, "app.build")
    if "cmake" not in bm:
        raise doc.fail(node, "app.build.cmake", "required: the folder of the app's CMakeLists.txt (relative to source)")
    cmake = _tree_path(doc, bm["cmake"][1], "app.build.cmake", None)
    if not (source / cmake / "CMakeLists.txt").is_file():
        raise doc.fail(bm["cmake"][1], "app.build.cmake", f"no CMakeLists.txt in {cmake} of app.source")
    if "artifacts" not in bm:
        raise doc.fail(node, "app.build.artifacts", "required: what the build leaves in the tree (out/main)")
    artifacts = tuple(_tree_path(doc, n, f"app.build.artifacts[{i}]", None)
                      for i, n in enumerate(_list(doc, bm["artifacts"][1], "app.build.artifacts")))
    out = {"dir": _tree_path(doc, bm["dir"][1], "app.build.dir", None)} if "dir" in bm else {}
    return Build(cmake=cmake, artifacts=artifacts, **out)


def _list(doc: Doc, node: yaml.Node, where: str) -> list[yaml.Node]:
    if isinstance(node, yaml.ScalarNode):
        return [node]
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise doc.fail(node, where, "must be a path or a list of paths")
    return list(node.value)


def _tree_path(doc: Doc, node: yaml.Node, where: str, path: str | None) -> str:
    """A '/'-separated path inside the app's tree, normalised; one line when it is absolute or leaves it."""
    value = doc.string(node, where) if path is None else path
    norm = posixpath.normpath(value.replace("\\", "/"))
    if norm.startswith("/") or norm == ".." or norm.startswith("../"):
        raise doc.fail(node, where, f"must stay inside app.source, not {doc.string(node, where)!r}")
    return norm


def _check_command(doc: Doc, node: yaml.Node, where: str, command: str, models: dict) -> None:
    """Placeholders are {images} and {model} (``{{``/``}}`` for a brace); {model} needs app.models."""
    import string

    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(command) if f is not None]
    except ValueError as exc:
        raise doc.fail(node, where, f"{exc} (write {{{{ and }}}} for a literal brace)") from None
    for f in fields:
        if f not in PLACEHOLDERS:
            raise doc.fail(node, where, f"unknown placeholder {{{f}}} (known: {{images}}, {{model}})")
    if "model" in fields and not models:
        raise doc.fail(node, where, "{model} needs app.models (the model variant each board runs)")


def _globs(doc: Doc, node: yaml.Node, where: str) -> tuple[str, ...]:
    if isinstance(node, yaml.ScalarNode):
        return (doc.string(node, where),)
    if not isinstance(node, yaml.SequenceNode):
        raise doc.fail(node, where, "must be a glob or a list of globs (python/common/**, **/*.py)")
    out = []
    for i, item in enumerate(node.value):
        glob = doc.string(item, f"{where}[{i}]")
        if glob.startswith("/") or ".." in glob.split("/"):
            raise doc.fail(item, f"{where}[{i}]", f"a glob is relative to app.source: {glob!r}")
        out.append(glob)
    return tuple(out)


def _requirements(doc: Doc, node: yaml.Node, source: Path) -> Path:
    rel = _tree_path(doc, node, "app.requirements", None)
    path = source / rel
    if not path.is_file():
        raise doc.fail(node, "app.requirements", f"not a file of app.source: {rel}")
    return path


def _own_health(doc: Doc, m: dict, models: dict) -> dict[str, Any]:
    """app.health.command / .expect (own apps): the command's output must match the regex."""
    if "health" not in m:
        return {}
    hm = doc.mapping(m["health"][1], "app.health")
    out: dict[str, Any] = {}
    if "command" in hm:
        out["health_command"] = doc.string(hm["command"][1], "app.health.command")
        _check_command(doc, hm["command"][1], "app.health.command", out["health_command"], models)
    if "expect" in hm:
        if "command" not in hm:
            raise doc.fail(hm["expect"][0], "app.health.expect", "goes with app.health.command")
        out["health_expect"] = doc.string(hm["expect"][1], "app.health.expect")
        try:
            re.compile(out["health_expect"])
        except re.error as exc:
            raise doc.fail(hm["expect"][1], "app.health.expect", f"not a regular expression: {exc}") from None
    return out
