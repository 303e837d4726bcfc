"""A trie of MQTT topic filters: which (filter, value) pairs match a topic.

The cluster route table (filter -> nodes with subscribers) and each node's
local subscriptions (filter -> sessions) are kept in one of these.  A node
per filter level; wildcard levels are children named ``+`` and ``#``.
Matching walks the topic's levels once, following at each node the literal
child, the ``+`` child and the ``#`` child, so it costs O(levels x
branching) and never scans the filters.

Matching follows MQTT 3.1.1, 4.7:

- ``+`` matches exactly one level, an empty one included (``a/+`` matches
  ``a/``, ``+/+`` matches ``/x``);
- ``#`` matches its level and every level below, and the parent level
  too (``a/#`` matches ``a``);
- a topic beginning with ``$`` is not matched by a filter whose first level
  is ``+`` or ``#`` (MQTT-4.7.2-1);
- levels may be empty (``a//b``, ``/a``) and compare as any other.

Filters must be valid topic filters (``#`` only alone in the last level,
``+`` alone in its level); topics must not contain ``+`` or ``#``.  Both
raise ``ValueError`` otherwise.  Values are any hashable.  Pure: no I/O,
no clock, no randomness.

:meth:`match` remembers its answers per topic (at most ``MATCH_CACHE_MAX``
topics, forgotten at every add or remove): a broker matches the same few
topics over and over, and a dict lookup costs a fraction of a walk.
"""
from __future__ import annotations

from typing import Hashable, Iterator

__all__ = ["TopicTrie"]

MATCH_CACHE_MAX = 4096  # topics whose matches are remembered (all forgotten when full)


class _Node:
    __slots__ = ("children", "values", "filter")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.values: set = set()
        self.filter = ""  # the filter ending at this node (set while it has values)


def _levels_of_filter(flt: str) -> list[str]:
    if type(flt) is not str or not flt:
        raise ValueError(f"a topic filter must be a non-empty str, got {flt!r}")
    levels = flt.split("/")
    if "+" in flt or "#" in flt:
        last = len(levels) - 1
        for i, level in enumerate(levels):
            if ("#" in level and (level != "#" or i != last)) or ("+" in level and level != "+"):
                raise ValueError(f"invalid topic filter {flt!r}: '#' must be alone in the last level, "
                                 f"'+' alone in its level")
    return levels


class TopicTrie:
    """Topic filters with values; :meth:`match` finds those matching a topic."""

    __slots__ = ("_root", "_pairs", "_cache")

    def __init__(self) -> None:
        self._root = _Node()
        self._pairs = 0
        self._cache: dict[str, tuple] = {}  # topic -> match(topic)

    def __len__(self) -> int:
        """Number of (filter, value) pairs."""
        return self._pairs

    def add(self, flt: str, value: Hashable) -> bool:
        """Register ``value`` under ``flt``; False if it was there already."""
        node = self._root
        for level in _levels_of_filter(flt):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        if value in node.values:
            return False
        self._cache.clear()
        node.values.add(value)
        node.filter = flt
        self._pairs += 1
        return True

    def remove(self, flt: str, value: Hashable) -> bool:
        """Unregister ``value`` from ``flt``; False if it was not there.
        Nodes left without values or children are pruned."""
        path = [self._root]
        levels = _levels_of_filter(flt)
        for level in levels:
            child = path[-1].children.get(level)
            if child is None:
                return False
            path.append(child)
        node = path[-1]
        if value not in node.values:
            return False
        self._cache.clear()
        node.values.discard(value)
        self._pairs -= 1
        for depth in range(len(levels), 0, -1):
            node = path[depth]
            if node.values or node.children:
                break
            del path[depth - 1].children[levels[depth - 1]]
        return True

    def match(self, topic: str) -> list[tuple[str, object]]:
        """Every (filter, value) whose filter matches the topic name ``topic``."""
        hit = self._cache.get(topic)
        if hit is not None:
            return list(hit)
        if type(topic) is not str or "+" in topic or "#" in topic:
            raise ValueError(f"not a topic name: {topic!r}")
        out: list[tuple[str, object]] = []
        for node in self._matching_nodes(topic):
            flt = node.filter
            out.extend((flt, v) for v in node.values)
        cache = self._cache
        if len(cache) >= MATCH_CACHE_MAX:
            cache.clear()
        cache[topic] = tuple(out)
        return out

    def has_match(self, topic: str) -> bool:
        """Whether any filter matches ``topic``."""
        if type(topic) is not str or "+" in topic or "#" in topic:
            raise ValueError(f"not a topic name: {topic!r}")
        for _ in self._matching_nodes(topic):
            return True
        return False

    def values(self, flt: str) -> set:
        """The values registered under exactly ``flt`` (a copy)."""
        node = self._root
        for level in _levels_of_filter(flt):
            node = node.children.get(level)
            if node is None:
                return set()
        return set(node.values)

    def filters(self) -> list[str]:
        """Every filter with at least one value (in no particular order)."""
        out: list[str] = []
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.values:
                out.append(node.filter)
            stack.extend(node.children.values())
        return out

    def _matching_nodes(self, topic: str) -> Iterator[_Node]:
        """The nodes with values whose filter matches ``topic`` (each once)."""
        levels = topic.split("/")
        n = len(levels)
        # MQTT-4.7.2-1: wildcards in the first level do not match '$' topics.
        stack = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            children = node.children
            if i == n:
                if node.values:
                    yield node
                hash_child = children.get("#")  # 'a/#' matches 'a' too
                if hash_child is not None and hash_child.values:
                    yield hash_child
                continue
            if i or not topic.startswith("$"):
                hash_child = children.get("#")
                if hash_child is not None and hash_child.values:
                    yield hash_child
                plus = children.get("+")
                if plus is not None:
                    stack.append((plus, i + 1))
            child = children.get(levels[i])
            if child is not None:
                stack.append((child, i + 1))
