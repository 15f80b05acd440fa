"""One registry per concept: a dict and a decorator, keyed by name.

Models, runtimes, energy meters and device profiles each keep one ``Registry``. Adding a backend is
one new file that registers itself. A leaf module: importable from every layer.

>>> MODELS = Registry("model")
>>> @MODELS.register("tiny")
... def tiny(): return 1
>>> MODELS.get("tiny")()
1
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from edgecompress.errors import BadInputError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object. Unknown names raise ``BadInputError`` listing close matches."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._items), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            known = ", ".join(sorted(self._items))
            raise BadInputError(f"unknown {self.kind} {name!r}{hint} (known: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
