"""Reading the YAML files users write (search spaces, run configs) without surprises.

`StrictLoader` reads YAML 1.2 scalars and refuses duplicate keys; `expanded_size` counts a
document's nodes with its aliases followed, so a "billion laughs" file is refused before it is built.
"""

from __future__ import annotations

import re

import yaml


class StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars and no silently dropped duplicate keys.

    PyYAML follows YAML 1.1: `off`/`no`/`on`/`yes` become booleans (so `count_embed: off`
    would be False) and `1e-4` (no dot) stays a string. Here only true/false are booleans
    and any decimal with an exponent is a float.
    """

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key: let PyYAML report it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.X,
)
# Float before int, as in PyYAML, so the first matching resolver for "1e-4" is the float one.
for _first in list("-+0123456789."):
    StrictLoader.yaml_implicit_resolvers.setdefault(_first, []).insert(0, ("tag:yaml.org,2002:float", _FLOAT))


MAX_YAML_CHARS = 1 << 20
MAX_YAML_NODES = 100_000  # after alias expansion: a "billion laughs" document is refused before it is built


def expanded_size(node, limit: int = MAX_YAML_NODES) -> int:
    """Nodes of a composed YAML document with every alias followed, counted without expanding it
    (each distinct node's size is computed once); stops counting past `limit`."""
    sizes: dict[int, int] = {}

    def size(n, depth=0) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if depth > 200:  # deeper than any search space; also keeps recursion bounded
            return limit + 1
        sizes[id(n)] = 1  # a node that contains itself (a recursive alias) counts once
        total = 1
        if isinstance(n.value, list):
            for item in n.value:
                parts = item if isinstance(item, tuple) else (item,)
                for part in parts:
                    total += size(part, depth + 1)
                    if total > limit:
                        break
        sizes[id(n)] = min(total, limit + 1)
        return sizes[id(n)]

    return size(node)


class TooManyNodes(ValueError):
    """A document whose aliases, followed, make more than MAX_YAML_NODES nodes."""


def load_strict(text: str):
    """One YAML document read with `StrictLoader`, refused (TooManyNodes) before it is built when
    following its aliases would make it larger than MAX_YAML_NODES."""
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if expanded_size(node) > MAX_YAML_NODES:
            raise TooManyNodes(f"expands to more than {MAX_YAML_NODES:,} YAML nodes once its aliases (*name) "
                               "are followed")
        return loader.construct_document(node)
    finally:
        loader.dispose()
