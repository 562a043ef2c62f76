"""Named registries (methods, models, channel importances): register once, get by name with one
clear error listing the valid names, list in registration order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import unknown

T = TypeVar("T")


class Registry(Generic[T]):
    """Items of one ``kind`` (``"method"``, ``"model"``, ...) by their name."""

    def __init__(self, kind: str, name_of: Callable[[T], str] = lambda item: item.name):  # type: ignore[attr-defined]
        self.kind = kind
        self._name_of = name_of
        self._items: dict[str, T] = {}

    def register(self, item: T) -> T:
        """Add ``item`` (names are unique)."""
        name = self._name_of(item)
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        """The item called ``name``.

        Raises:
            ConfigError: unknown name (the message lists the valid ones).
        """
        if not isinstance(name, str) or name not in self._items:
            raise unknown(self.kind, name, self._items)
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> list[T]:
        return list(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items
