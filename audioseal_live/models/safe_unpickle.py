"""Read official checkpoints without running code from them.

Official AudioSeal checkpoints are torch pickles whose ``xp.cfg`` is an omegaconf DictConfig.
The reference loads them with ``weights_only=False``, which lets a crafted file run any code.
We load with ``weights_only=True`` and allow exactly the globals a pickled DictConfig uses —
mapped onto inert stand-ins defined here, so omegaconf is never imported or instantiated and
anything else in the file is refused.
"""

from __future__ import annotations

import collections
import re
import typing
from typing import Any


class _Inert:
    """Takes the pickled ``__dict__`` and nothing else: no methods of the original run."""

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {"_state": state}


class _DictConfig(_Inert):
    pass


class _ListConfig(_Inert):
    pass


class _Node(_Inert):
    pass


class _Metadata(_Inert):
    pass


_NODE_NAMES = (
    "AnyNode",
    "StringNode",
    "IntegerNode",
    "FloatNode",
    "BooleanNode",
    "BytesNode",
    "PathNode",
)

# The whole allowlist: stand-ins named as omegaconf's classes, plus the harmless stdlib objects
# that DictConfig metadata refers to as type tags (typing.Any, dict, list, scalar types) and
# the resolver cache, a defaultdict(dict).
SAFE_GLOBALS: list[tuple[Any, str]] = [
    (_DictConfig, "omegaconf.dictconfig.DictConfig"),
    (_ListConfig, "omegaconf.listconfig.ListConfig"),
    (_Metadata, "omegaconf.base.ContainerMetadata"),
    (_Metadata, "omegaconf.base.Metadata"),
    *[(_Node, f"omegaconf.nodes.{n}") for n in _NODE_NAMES],
    (typing.Any, "typing.Any"),
    (collections.defaultdict, "collections.defaultdict"),
    *[(t, f"builtins.{t.__name__}") for t in (dict, list, int, float, str, bool)],
]


def to_plain(obj: Any) -> Any:
    """Stand-in config objects → plain dicts, lists and scalars (interpolations unresolved)."""
    if isinstance(obj, _DictConfig):
        content = obj.state.get("_content")
        if not isinstance(content, dict):
            return content  # None, "???" (missing) or an interpolation string
        return {str(k): to_plain(v) for k, v in content.items()}
    if isinstance(obj, _ListConfig):
        content = obj.state.get("_content")
        return [to_plain(v) for v in content] if isinstance(content, list) else content
    if isinstance(obj, _Node):
        return to_plain(obj.state.get("_val"))
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    return obj


_INTERP = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


def resolve_interpolations(cfg: dict[str, Any]) -> dict[str, Any]:
    """Resolve absolute ``${a.b}`` references, as OmegaConf.resolve does for plain configs.

    Each path is resolved once (a file of nested references must not cost exponential
    time); a reference back to a path being resolved is a cycle (ValueError)."""
    done: dict[str, Any] = {}
    active: set[str] = set()

    def lookup(path: str) -> Any:
        if path in done:
            return done[path]
        if path in active:
            raise ValueError(f"interpolation cycle in checkpoint config at ${{{path}}}")
        node: Any = cfg
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return "${" + path + "}"  # leave what cannot be resolved
            node = node[part]
        active.add(path)
        done[path] = resolve(node)
        active.discard(path)
        return done[path]

    def resolve(value: Any, depth: int = 0) -> Any:
        if depth > 64:
            raise ValueError("checkpoint config nested too deeply")
        if isinstance(value, dict):
            return {k: resolve(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, depth + 1) for v in value]
        if isinstance(value, str):
            whole = _INTERP.fullmatch(value)
            if whole:
                return lookup(whole.group(1))
            return _INTERP.sub(lambda m: str(lookup(m.group(1))), value)
        return value

    return resolve(cfg)
