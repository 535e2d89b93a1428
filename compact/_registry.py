"""The one registry idiom of compact: register by decorator, build by name, unknown names list the valid ones.

Models, heads, loss-weighting schedules and backpropagation methods are all registered this way::

    HEADS = Registry("head type")

    @HEADS.register("gap-fc")
    class GapFc(nn.Module): ...

    HEADS.get("gap-fc")   # -> GapFc
    HEADS.get("gapfc")    # UnknownNameError: unknown head type 'gapfc'; valid head types: ...
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from compact.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table for one kind of thing (``kind`` is used in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its target under ``name`` (names are unique and case-sensitive)."""

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries) from None

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style ``pattern``, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
