"""``app:`` of the inventory: the built-in classifier's settings, or the user's own app (a tree, its command,
its requirements, its C/C++ build), as typed, frozen values checked where they are parsed."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .doc import PATH_RE, Doc, path_value

if TYPE_CHECKING:
    from .own import OwnApp

# the own app's fields (inventory/own.py parses them)
OWN_KEYS = {"source", "include", "exclude", "workdir", "command", "outputs", "requirements", "follow_links", "build"}

# patterns end in \Z, not $ (which matches before a final newline too): a value is exactly what its grammar says
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# env keys that change how the board runs code (shell, loader: LD_* too, Python's imports): only with app.env_unsafe
UNSAFE_ENV = frozenset({"PATH", "BASH_ENV", "ENV", "IFS", "CDPATH", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND",
                        "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONINSPECT",
                        "PYTHONWARNINGS", "GCONV_PATH"})


BACKENDS = ("onnx", "om", "magicmind")  # app.models kinds: ONNX, Ascend .om, a MagicMind model


PRESETS = ("imagenet", "caffe", "cifar", "raw-u8")


@dataclass(frozen=True)
class Service:
    """``app.service``: how ``deploy service start`` runs the agent as a service (see agent/service.py)."""

    inbox: str = ""  # on the board; "" = ~/HIAI_PROJECTS/<app>/inbox
    policy: str = "move"  # what happens to a classified image: keep | move (to <inbox>/done/) | delete
    max_disk: int = 1 << 30  # bytes the service may use: journal, logs, done/
    settle: float = 2.0  # seconds a file written in place (not renamed in) must keep its size
    rotate: int = 16 << 20  # journal segment size
    log_max: int = 4 << 20  # agent.log size before it is rotated


SERVICE_POLICIES = ("keep", "move", "delete")


SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*$")


def unsafe_env(keys) -> list[str]:
    """The env keys among ``keys`` that change how the board runs code (``UNSAFE_ENV``, ``LD_*``), sorted."""
    return sorted(k for k in keys if k in UNSAFE_ENV or k.startswith("LD_"))


def parse_size(text: str | int) -> int | None:
    """``500MB``, ``2GiB``, ``1.5G``, ``4096`` as bytes (K/M/G/T are powers of 1024); None if unreadable."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = SIZE_RE.match(str(text))
    if not m:
        return None
    return int(float(m[1]) * 1024 ** " KMGT".index((m[2] or " ").upper()))


@dataclass(frozen=True)
class App:
    name: str
    models: dict[str, Path]  # backend file kind ("onnx" | "om") -> local path
    labels: Path | None
    images: Path | None
    preprocess: dict[str, Any]
    topk: int = 5
    batch: int = 1
    keep_releases: int = 5
    env: dict[str, str] = field(default_factory=dict)
    backend_options: dict[str, Any] = field(default_factory=dict)  # acl: async, callback_interval, buffers, device, decode
    env_unsafe: bool = False  # app.env_unsafe: env may set keys that change how the board runs code (unsafe_env)
    probe: Path | None = None  # app.health.probe: the health check's image (None: chosen from app.images)
    health_timeout: int = 60  # app.health.timeout: seconds the board's agent may take for the check
    service: Service = field(default_factory=Service)  # app.service
    own: OwnApp | None = None  # the user's own app (app.command, inventory/own.py); None: the built-in agent classifies

    @property
    def kind(self) -> str:
        """``command`` for the user's own app, ``agent`` for the built-in classifier."""
        return "command" if self.own is not None else "agent"


_APP_KEYS = {"name", "models", "labels", "images", "preprocess", "topk", "batch", "keep_releases", "env",
             "backend_options", "health", "service", "env_unsafe"} | OWN_KEYS


# app.backend_options (the acl backend's; seed 000's async sample: callback interval, in-flight buffers)
_ACL_OPTIONS = {"async": (bool, None), "callback_interval": (int, (1, 10000)), "buffers": (int, (1, 64)),
                "device": (int, (0, 63)), "decode": (str, ("cpu", "dvpp"))}  # decode: JPEGs on the CPU or on DVPP


def parse_app(doc: Doc, node: yaml.Node, base: Path) -> App:
    m = doc.mapping(node, "app")
    doc.check_keys(m, _APP_KEYS, "app")
    if "name" not in m:
        raise doc.fail(node, "app.name", "required field is missing")
    name = doc.string(m["name"][1], "app.name", NAME_RE, "use letters, digits, '.', '_' and '-'")
    if "models" not in m and "command" not in m:
        raise doc.fail(node, "app.models", "required field is missing (e.g. models: {onnx: models/net.onnx}), "
                       "unless the app is your own (app.command)")
    models = _models(doc, m["models"][1], base) if "models" in m else {}
    own = None
    if "command" in m:
        from .own import parse_own  # only an inventory with an own app pays for its module

        own = parse_own(doc, node, m, base, models)
    if own is None and [k for k in OWN_KEYS if k in m]:
        k = next(k for k in OWN_KEYS if k in m)
        raise doc.fail(m[k][0], f"app.{k}", "belongs to your own app: set app.command too")
    preprocess: dict[str, Any] = {"preset": "imagenet"}
    if "preprocess" in m:
        pnode = m["preprocess"][1]
        if isinstance(pnode, yaml.ScalarNode):
            preprocess = {"preset": doc.string(pnode, "app.preprocess")}
        else:
            preprocess = doc.plain(pnode, "app.preprocess")
            if not isinstance(preprocess, dict):
                raise doc.fail(pnode, "app.preprocess", "must be a preset name or a mapping with preset:")
            preprocess.setdefault("preset", "imagenet")
        if preprocess["preset"] not in PRESETS:
            raise doc.fail(pnode, "app.preprocess.preset", f"must be one of {', '.join(PRESETS)}, not {preprocess['preset']!r}")
        for key in ("mean", "std"):
            if key in preprocess:
                v = preprocess[key]
                if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
                    raise doc.fail(pnode, f"app.preprocess.{key}", "must be a list of three numbers")
    env_unsafe = doc.boolean(m["env_unsafe"][1], "app.env_unsafe") if "env_unsafe" in m else False
    env = _env(doc, m["env"][1], env_unsafe) if "env" in m else {}
    return App(
        name=name,
        models=models,
        labels=path_value(doc, m["labels"][1], "app.labels", base) if "labels" in m else None,
        images=path_value(doc, m["images"][1], "app.images", base) if "images" in m else None,
        preprocess=preprocess,
        topk=doc.integer(m["topk"][1], "app.topk", 1, 1000) if "topk" in m else 5,
        batch=doc.integer(m["batch"][1], "app.batch", 1, 1024) if "batch" in m else 1,
        keep_releases=doc.integer(m["keep_releases"][1], "app.keep_releases", 1, 100) if "keep_releases" in m else 5,
        env=env,
        env_unsafe=env_unsafe,
        backend_options=_backend_options(doc, m["backend_options"][1]) if "backend_options" in m else {},
        **(_health(doc, m["health"][1], base) if "health" in m else {}),
        **({"service": _service(doc, m["service"][1])} if "service" in m else {}),
        own=own,
    )


def _env(doc: Doc, node: yaml.Node, unsafe_ok: bool) -> dict[str, str]:
    """app.env: shell names, values without control characters but tab; ``unsafe_env`` keys only if allowed."""
    env = {}
    for k, (knode, vnode) in doc.mapping(node, "app.env").items():
        if not ENV_KEY_RE.match(k):
            raise doc.fail(knode, f"app.env.{k}", "not a valid environment variable name")
        val = doc.scalar(vnode, f"app.env.{k}")
        env[k] = "" if val is None else str(val)
        if env[k] and not PATH_RE.match(env[k].replace("\t", " ")):
            raise doc.fail(vnode, f"app.env.{k}", "a value cannot hold control characters (newlines included)")
        if unsafe_env([k]) and not unsafe_ok:
            raise doc.fail(knode, f"app.env.{k}", "changes how the board runs code (the shell, the loader or Python's "
                           "imports); set app.env_unsafe: true to allow it")
    return env


def _models(doc: Doc, node: yaml.Node, base: Path) -> dict[str, Path]:
    models = {}
    for kind, (knode, vnode) in doc.mapping(node, "app.models").items():
        if kind not in BACKENDS:
            raise doc.fail(knode, f"app.models.{kind}", f"model kind must be one of {', '.join(BACKENDS)}")
        models[kind] = path_value(doc, vnode, f"app.models.{kind}", base)
    if not models:
        raise doc.fail(node, "app.models", "name at least one model")
    return models


def _service(doc: Doc, node: yaml.Node) -> Service:
    """app.service: ``{inbox: ~/in, policy: move, max_disk: 2GB, settle: 2, rotate: 16MB, log_max: 4MB}``."""
    sm = doc.mapping(node, "app.service")
    doc.check_keys(sm, {"inbox", "policy", "max_disk", "settle", "rotate", "log_max"}, "app.service")
    out: dict[str, Any] = {}
    if "inbox" in sm:
        out["inbox"] = doc.string(sm["inbox"][1], "app.service.inbox", PATH_RE, "a path cannot hold control characters")
    if "policy" in sm:
        policy = doc.string(sm["policy"][1], "app.service.policy")
        if policy not in SERVICE_POLICIES:
            raise doc.fail(sm["policy"][1], "app.service.policy", f"must be one of {', '.join(SERVICE_POLICIES)}, "
                           f"not {policy!r}")
        out["policy"] = policy
    for key, lo in (("max_disk", 1 << 20), ("rotate", 4096), ("log_max", 4096)):
        if key in sm:
            vnode = sm[key][1]
            size = parse_size(doc.scalar(vnode, f"app.service.{key}"))
            if size is None or size < lo:
                raise doc.fail(vnode, f"app.service.{key}", f"must be a size of at least {lo} bytes "
                               f"(e.g. 500MB, 2GiB), not {vnode.value!r}")
            out[key] = size
    if "settle" in sm:
        vnode = sm["settle"][1]
        val = doc.scalar(vnode, "app.service.settle")
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0 <= val <= 3600:
            raise doc.fail(vnode, "app.service.settle", f"must be seconds 0-3600, not {val!r}")
        out["settle"] = float(val)
    return Service(**out)


def _health(doc: Doc, node: yaml.Node, base: Path) -> dict[str, Any]:
    """app.health: ``{probe: images/cat.jpg, timeout: 60}`` (both optional) as App fields."""
    hm = doc.mapping(node, "app.health")
    doc.check_keys(hm, {"probe", "timeout", "command", "expect"}, "app.health")
    out: dict[str, Any] = {}
    if "probe" in hm:
        out["probe"] = path_value(doc, hm["probe"][1], "app.health.probe", base)
    if "timeout" in hm:
        out["health_timeout"] = doc.integer(hm["timeout"][1], "app.health.timeout", 1, 3600)
    return out


def _backend_options(doc: Doc, node: yaml.Node) -> dict[str, Any]:
    """app.backend_options, each checked: ``{async: true, callback_interval: 8, buffers: 4}``."""
    out: dict[str, Any] = {}
    for key, (knode, vnode) in doc.mapping(node, "app.backend_options").items():
        if key not in _ACL_OPTIONS:
            raise doc.fail(knode, f"app.backend_options.{key}", f"unknown option (known: {', '.join(_ACL_OPTIONS)})")
        kind, bounds = _ACL_OPTIONS[key]
        where = f"app.backend_options.{key}"
        if kind is bool:
            value = doc.plain(vnode, where)
            if not isinstance(value, bool):
                raise doc.fail(vnode, where, "must be true or false")
            out[key] = value
        elif kind is str:
            value = doc.plain(vnode, where)
            if value not in bounds:
                raise doc.fail(vnode, where, f"must be one of {', '.join(bounds)}, not {value!r}")
            out[key] = value
        else:
            out[key] = doc.integer(vnode, where, *bounds)
    return out
