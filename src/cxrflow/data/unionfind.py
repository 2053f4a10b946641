"""Disjoint sets (union-find): the one implementation behind duplicate groups and linked patients."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

K = TypeVar("K", int, str)


class UnionFind(Generic[K]):
    """Disjoint sets over ``items``; every set is represented by its smallest member.

    Representing a set by its minimum makes group ids deterministic whatever the order of the
    unions (the split uses them as patient-group ids).
    """

    def __init__(self, items: Iterable[K]) -> None:
        self._parent: dict[K, K] = {x: x for x in items}

    def __contains__(self, item: object) -> bool:
        return item in self._parent

    def find(self, item: K) -> K:
        """The representative (smallest member) of ``item``'s set, with path halving."""
        parent = self._parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(self, a: K, b: K) -> None:
        """Merge the sets of ``a`` and ``b``."""
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> dict[K, K]:
        """``{item: representative}`` for every item, in insertion order."""
        return {x: self.find(x) for x in self._parent}
