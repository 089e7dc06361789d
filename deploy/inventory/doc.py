"""Walking composed YAML nodes: every problem becomes one ``file:line: field: message`` error."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import InventoryError

PATH_RE = re.compile(r"^[^\x00-\x1f\x7f]+\Z")  # a path has no control character (nor has an env value but tab)


class Doc:
    """Walks composed YAML nodes, turning each problem into a file:line: field: message error."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, node: yaml.Node | None, where: str, msg: str) -> InventoryError:
        line = node.start_mark.line + 1 if node is not None else 1
        return InventoryError(f"{self.path}:{line}: {where}: {msg}")

    def mapping(self, node: yaml.Node, where: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, where, "must be a mapping (key: value lines)")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise self.fail(k, where, "keys must be plain names")
            if k.value in out:
                raise self.fail(k, f"{where}.{k.value}" if where else k.value, "duplicate key")
            out[k.value] = (k, v)
        return out

    def check_keys(self, m: dict, allowed: set[str], where: str) -> None:
        for key, (knode, _) in m.items():
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                raise self.fail(knode, f"{where}.{key}" if where else key, f"unknown field (expected one of: {hint})")

    def scalar(self, node: yaml.Node, where: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, where, "must be a single value, not a list or mapping")
        return self.plain(node, where) if node.tag != "tag:yaml.org,2002:str" else node.value

    def string(self, node: yaml.Node, where: str, pattern: re.Pattern | None = None, what: str = "") -> str:
        val = self.scalar(node, where)
        if not isinstance(val, str) or not val:
            raise self.fail(node, where, f"must be a non-empty string, not {val!r}")
        if pattern is not None and not pattern.match(val):
            raise self.fail(node, where, f"{what or 'invalid value'}: {val!r}")
        return val

    def integer(self, node: yaml.Node, where: str, lo: int, hi: int) -> int:
        val = self.scalar(node, where)
        if isinstance(val, bool) or not isinstance(val, int) or not lo <= val <= hi:
            raise self.fail(node, where, f"must be an integer {lo}-{hi}, not {val!r}")
        return val

    def boolean(self, node: yaml.Node, where: str) -> bool:
        val = self.scalar(node, where)
        if not isinstance(val, bool):
            raise self.fail(node, where, f"must be true or false, not {val!r}")
        return val

    def plain(self, node: yaml.Node, where: str) -> Any:
        """Any YAML value, as plain Python (for free-form sections such as preprocess overrides)."""
        if node.tag == "tag:yaml.org,2002:null":  # `key:` left empty serializes to no document at all
            return None
        return yaml.safe_load(yaml.serialize(node))


def path_value(doc: Doc, node: yaml.Node, where: str, base: Path) -> Path:
    p = Path(doc.string(node, where, PATH_RE, "a path cannot hold control characters")).expanduser()
    return p if p.is_absolute() else base / p


def path_conv(doc: Doc, base: Path):
    def conv(node, where):
        return path_value(doc, node, where, base)

    return conv
