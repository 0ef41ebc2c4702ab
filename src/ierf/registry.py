"""One way to name things: a dictionary from names to classes whose lookups of unknown names
fail with the valid names and close matches (methods, metrics, concept methods, extractors)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ierf.errors import unknown_name

T = TypeVar("T")


class Registry(dict[str, T]):
    """``name → item``; ``registry[name]`` of an unknown name raises
    :class:`~ierf.errors.UnknownNameError` naming ``kind`` and listing the valid names."""

    def __init__(self, kind: str, items: dict[str, T] | None = None) -> None:
        super().__init__(items or {})
        self.kind = kind

    def __missing__(self, name: str) -> T:
        raise unknown_name(self.kind, name, list(self))

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: add a class under ``name`` (default: its ``name`` attribute, else its
        class name)."""
        def add(item: T) -> T:
            key = name or getattr(item, "name", None) or item.__name__
            self[key] = item
            return item
        return add

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self)
