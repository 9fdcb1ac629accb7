"""One small name -> component registry, used for models, losses and readers [timm].

>>> LOSSES = Registry("loss")
>>> @LOSSES.register("dice_ce")
... def build_dice_ce(**options): ...
>>> LOSSES.get("dice_ce")           # the registered object itself
>>> LOSSES.get("dice_c")            # ConfigError: unknown loss `dice_c`; did you mean `dice_ce`? ...

Keys are lowercase ``family_dims`` strings (``resnet18_2d``); hyperparameters never appear in them.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from medlens.errors import ConfigError

T = TypeVar("T")

_KEY = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


class Registry(Generic[T]):
    """Maps lowercase names to components (usually builder functions).

    Args:
        kind: what is registered, in the singular (``"classifier"``, ``"loss"``); used in messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its target under ``name`` and returns it unchanged.

        Decorators can be stacked to register one builder under several names.

        Raises:
            ValueError: ``name`` is not a lowercase ``family_dims`` key, or is already taken
                (a programming error, not a user's).
        """
        if not _KEY.match(name):
            raise ValueError(f"registry key {name!r} must be lowercase words joined by '_', e.g. 'resnet18_2d'")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")

        def decorator(obj: T) -> T:
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """The component registered under ``name``.

        Raises:
            ConfigError: ``name`` is unknown; the message suggests the closest names and lists all.
        """
        if name in self._entries:
            return self._entries[name]
        raise ConfigError(self._unknown_message(name))

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"

    def _unknown_message(self, name: object) -> str:
        known = self.names()
        close = difflib.get_close_matches(str(name).lower(), known, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(f'`{c}`' for c in close)}?" if close else "."
        return f"unknown {self.kind} `{name}`{hint} Known {self.kind}s: {', '.join(known) or '(none)'}"
