"""The user's own app tree: which files of ``app.source`` a release ships, with the layout kept.

Huawei's samples reach their helper library by relative ``sys.path`` tricks
(``os.path.join(path, "../../../../common/acllite")``) and write next to their code (``../out``), so the
tree lands under the release's ``app/`` exactly as it is in ``source`` after ``include``/``exclude``.

Globs are matched against '/'-separated paths relative to ``source``: ``**`` is any number of folders,
``*`` and ``?`` stay inside one name; a glob without ``/`` matches a name at any depth (``*.caffemodel``).
Every include must match a file (a typo would otherwise ship nothing, silently).

Only regular files travel. A symlink is refused in one line unless ``app.follow_links`` is set and it
points inside the tree (then its target's content ships under the link's name); one that leaves the tree
is always refused. Release files are read-only (0444, 0555 for executables): a run works on its own tree
of hard links (``agent/command.py``), so an app that opened a shipped file for writing would otherwise
change the release under every later run.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError
from ..inventory.own import OwnApp

PREFIX = "app"  # where the tree lands in a release (bundle.TREE)


@dataclass(frozen=True)
class Glob:
    text: str
    regex: re.Pattern
    folder: re.Pattern | None  # for "X/**": matches the folder X itself (its whole tree goes)


def _segment(part: str) -> str:
    out = ""
    i = 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[" and "]" in part[i + 1:]:
            j = part.index("]", i + 1)
            body = part[i + 1:j]
            out += "[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]"
            i = j
        else:
            out += re.escape(c)
        i += 1
    return out


def compile_glob(text: str) -> Glob:
    """A glob as regexes (see the module doc for the rules)."""
    pattern = text.strip("/") if "/" in text.strip("/") else "**/" + text.strip("/")
    parts = pattern.split("/")
    out = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out += ".*" if last else "(?:[^/]+/)*"
        else:
            out += _segment(part) + ("" if last else "/")
    folder = None
    if len(parts) > 1 and parts[-1] == "**":
        folder = re.compile("^" + out[: -len("/.*")] + "$") if out.endswith("/.*") else None
    return Glob(text, re.compile("^" + out + "$"), folder)


def tree_files(own: OwnApp) -> list[tuple[str, Path]]:
    """(release path ``app/<rel>``, local file) for every file the release ships, sorted; BuildError (one
    line) for a symlink it may not follow, a special file, or an include that matches nothing. Walked once
    per command (the push's local check and each target's bundle ask for the same tree)."""
    seen = _WALKED.get(id(own))
    if seen is None or seen[0] is not own:     # keyed by the object: a reloaded inventory walks again
        seen = _WALKED[id(own)] = (own, walk_tree(own))
    return list(seen[1])


_WALKED: dict[int, tuple[OwnApp, tuple[tuple[str, Path], ...]]] = {}


def walk_tree(own: OwnApp) -> tuple[tuple[str, Path], ...]:
    """The walk behind tree_files, uncached."""
    root = own.source.resolve()
    includes = [compile_glob(g) for g in own.include]
    excludes = [compile_glob(g) for g in own.exclude]
    used = [False] * len(includes)
    files: list[tuple[str, Path]] = []
    _walk(own, root, root, "", includes, excludes, used, files, set())
    unused = [g for g, hit in zip(own.include, used, strict=True) if not hit]
    if unused:
        raise BuildError(f"app.include: {unused[0]!r} matches no file of app.source ({own.source})")
    if not files:
        raise BuildError(f"app.source ({own.source}): no file left after app.include / app.exclude")
    return tuple(sorted(files))


def _walk(own, root: Path, folder: Path, rel: str, includes, excludes, used, files, seen: set) -> None:
    """One folder of the tree (``rel`` from the root); symlinked folders only when followed and inside."""
    seen.add(folder.resolve())
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        path = f"{rel}{entry.name}"
        if entry.is_dir():  # a folder, or a symlink to one (checked by _source before it is walked)
            if any(g.folder is not None and g.folder.match(path) for g in excludes):
                continue
            target = _source(own, root, Path(entry.path), path) if entry.is_symlink() else Path(entry.path)
            if target.resolve() not in seen:
                _walk(own, root, target, path + "/", includes, excludes, used, files, seen)
            continue
        if any(g.regex.match(path) for g in excludes):
            continue
        hits = [i for i, g in enumerate(includes) if g.regex.match(path)]
        if hits:
            for i in hits:
                used[i] = True
            plain = not entry.is_symlink() and entry.is_file(follow_symlinks=False)  # from the folder read
            files.append((f"{PREFIX}/{path}", Path(entry.path) if plain else _source(own, root, Path(entry.path), path)))


def _source(own: OwnApp, root: Path, path: Path, rel: str) -> Path:
    """The file whose content ships at ``rel``: itself, or a followed symlink's target inside the tree."""
    if path.is_symlink():
        target = path.resolve()
        inside = target == root or root in target.parents
        if not inside:
            raise BuildError(f"app.source: {rel} is a symlink to {target}, outside the app's tree: refused "
                             "(copy the file into the tree)")
        if not own.follow_links:
            raise BuildError(f"app.source: {rel} is a symlink (to {target.relative_to(root)}): set "
                             "app.follow_links: true to ship its target's content, or replace it by the file")
        if not target.exists():
            raise BuildError(f"app.source: {rel} is a dangling symlink")
        return target
    mode = path.lstat().st_mode
    if stat.S_ISREG(mode):
        return path
    raise BuildError(f"app.source: {rel} is not a regular file (a device, socket or pipe): refused")


