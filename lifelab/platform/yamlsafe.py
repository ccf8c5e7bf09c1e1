"""YAML parsing for specs that a mistake or a hostile file cannot turn into a hang.

`yaml.safe_load` builds no objects, but it expands aliases by reference and recurses once per
nesting level: a "billion laughs" spec (aliases of aliases) grows past gigabytes as soon as
anything walks it, and a deeply nested list ends in a RecursionError thousands of lines long.
Specs need neither, so both are bounded while parsing.
"""

from __future__ import annotations

from typing import Any

import yaml

from lifelab.errors import ConfigError

MAX_NODES = 100_000      # values in the spec with every alias expanded (a spec has hundreds)
MAX_DEPTH = 32           # spec -> search -> mutations -> key -> ladder -> layer sizes is 6


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._size: dict[int, int] = {}      # node -> its value count, aliases expanded

    def compose_node(self, parent, index):
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ConfigError(f"the YAML nests deeper than {MAX_DEPTH} levels: a spec needs far "
                              "fewer; check the brackets")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if id(node) not in self._size:       # an alias returns its anchor's node, sized before
            children = node.value if isinstance(node, yaml.SequenceNode) else (
                [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                else [])
            self._size[id(node)] = 1 + sum(self._size.get(id(c), 1) for c in children)
        if self._size[id(node)] > MAX_NODES:
            raise ConfigError(f"the YAML expands to more than {MAX_NODES} values (aliases of "
                              "aliases): write the values out")
        return node


def load_yaml(text: str) -> Any:
    """Parse YAML text with aliases and nesting bounded (ConfigError past them); YAML syntax
    errors propagate as yaml.YAMLError for the caller to place."""
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader subclass)


def check_depth(value: Any, where: str = "spec", limit: int = MAX_DEPTH) -> None:
    """A ConfigError if a spec built in Python nests deeper than `limit` (iteratively: a
    100,000-deep list must not exhaust the interpreter's recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise ConfigError(f"{where} nests deeper than {limit} levels: a spec needs far "
                              "fewer; check the brackets")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)
