"""The one YAML loader for everything a user hands flexpaft: configs, task files, prompt sets.

PyYAML's SafeLoader refuses code (``!!python`` tags) but not size: ten lines of anchors and
aliases (a "billion laughs") compose into a graph whose expansion has 10^9 nodes. Building the
Python objects is cheap (aliases share one object), but anything that walks or prints them
afterwards (config coercion, an error message's repr) hangs. So the composed node graph is
measured, expanded as a consumer would see it, before any object is constructed, and refused
past a limit far above any real file. The loader also refuses a key given twice in one mapping
(YAML keeps the last one silently) and supports the merge key ``<<:``.
"""

from __future__ import annotations

from typing import Any

import yaml

from flexpaft.errors import FlexpaftError

# Far above any real config or prompt set (a 450-template set is ~1,000 nodes and ~100 KB) and
# far below what hangs: walking 10^6 nodes takes about a second.
MAX_EXPANDED_NODES = 200_000
MAX_EXPANDED_CHARS = 20_000_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _TooBig(yaml.YAMLError):
    pass


class YamlRefused(FlexpaftError):
    """Well-formed YAML refused for its size (an alias bomb), not a syntax error: a caller that
    falls back to the raw text on malformed YAML must not fall back on this."""


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """(nodes, scalar characters) of ``root`` with every alias expanded, counted on the shared
    graph (each distinct node once, memoised), so a bomb is measured without being expanded.
    A node that contains itself (``&a [*a]``) expands forever and is refused."""
    sizes: dict[int, tuple[int, int]] = {}
    open_: set[int] = set()

    def size(node: yaml.Node) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise _TooBig("an alias refers to the node that contains it (infinite expansion)")
        open_.add(key)
        if isinstance(node, yaml.ScalarNode):
            total = (1, len(node.value))
        else:
            children = (
                [c for pair in node.value for c in pair]
                if isinstance(node, yaml.MappingNode)
                else list(node.value)
            )
            n, chars = 1, 0
            for child in children:
                cn, cc = size(child)
                n, chars = n + cn, chars + cc
                if n > MAX_EXPANDED_NODES or chars > MAX_EXPANDED_CHARS:
                    raise _TooBig(
                        f"its aliases expand past {MAX_EXPANDED_NODES:,} values or "
                        f"{MAX_EXPANDED_CHARS:,} characters (an alias bomb?)"
                    )
            total = (n, chars)
        open_.discard(key)
        sizes[key] = total
        return total

    # Deep nesting recurses once per level; PyYAML itself fails long before Python's limit.
    return size(root)


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and documents whose aliases expand too far."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        try:
            _expanded_size(node)
        except RecursionError:
            raise _TooBig("it is nested too deeply") from None
        return self.construct_document(node)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        # Only the mapping's own keys are checked: a key that overrides one brought in by
        # ``<<: *base`` is the point of the merge key, not a duplicate. (SafeConstructor's
        # construct_mapping flattens the merges; constructing the ``<<`` key here first was
        # what refused it, as "could not determine a constructor for ...merge".)
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: SafeConstructor names it below
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: object) -> Any:
    """Parse ``text`` (from ``source``, named in errors) with :class:`BoundedLoader`; any YAML
    problem is one ``FlexpaftError`` line with its position."""
    try:
        return yaml.load(text, Loader=BoundedLoader)
    except _TooBig as e:
        raise YamlRefused(f"YAML in {source} refused: {e}") from None
    except RecursionError:  # nesting deeper than the parser's own recursion allows
        raise YamlRefused(f"YAML in {source} refused: it is nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise FlexpaftError(f"malformed YAML in {source}{at}: {problem}") from None
