"""A lazy name → ``"module:attribute"`` table with did-you-mean errors.

Registries keep the import of each entry until it is asked for, so adding a method or a calibration
source is one file plus one line in the table that names it.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Any, Generic, Iterator, TypeVar

from .errors import CalibPruneError, ConfigError

__all__ = ["Registry", "options_from_dict", "suggest"]

T = TypeVar("T")


def suggest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return a ``" Did you mean 'x'?"`` hint (or an empty string) for an unknown ``name``."""
    close = difflib.get_close_matches(str(name).lower(), [c.lower() for c in choices], n=1, cutoff=0.6)
    if not close:
        return ""
    original = next(c for c in choices if c.lower() == close[0])
    return f" Did you mean '{original}'?"


def options_from_dict(owner: str, options_type: type, options: dict[str, Any] | None, argument: str) -> Any:
    """Build an options dataclass from a plain dict, naming any unknown key with a did-you-mean.

    Args:
        owner (`str`): what takes the options, for the message (``"method 'sparsegpt'"``).
        options_type (`type`): the dataclass.
        options (`dict`, *optional*): the values.
        argument (`str`): the config field that held them (``"method_options"``).
    """
    options = dict(options or {})
    known = [f.name for f in dataclasses.fields(options_type)]
    for key in options:
        if key not in known:
            raise ConfigError(
                f"`{argument}` has '{key}', which {owner} does not take.{suggest(key, known)} "
                f"Its options are: {', '.join(known) or 'none'}."
            )
    return options_type(**options)


class Registry(Generic[T]):
    """Maps lowercase hyphenated names to objects imported on first use.

    Args:
        kind (`str`): what the entries are, used in error messages (``"pruning method"``).
        entries (`dict[str, str]`): name → ``"package.module:Attribute"``.
        error (`type[Exception]`, *optional*): exception raised for unknown names.
    """

    def __init__(self, kind: str, entries: dict[str, str], error: type[Exception] = CalibPruneError) -> None:
        self.kind = kind
        self._entries = dict(entries)
        self._loaded: dict[str, T] = {}
        self._error = error

    def register(self, name: str, target: str | T) -> None:
        """Add ``name``; ``target`` is an object or a ``"module:attribute"`` string."""
        if isinstance(target, str):
            self._entries[name] = target
            self._loaded.pop(name, None)
        else:
            self._entries[name] = f"<object {target!r}>"
            self._loaded[name] = target

    def names(self) -> list[str]:
        """All registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def check(self, name: str) -> str:
        """Return ``name`` if registered, else raise an error listing the known names."""
        if name not in self._entries:
            known = ", ".join(sorted(self._entries))
            raise self._error(
                f"Unknown {self.kind} '{name}'.{suggest(name, self.names())} Known {self.kind}s: {known}."
            )
        return name

    def get(self, name: str) -> T:
        """Import (once) and return the object registered as ``name``."""
        self.check(name)
        if name not in self._loaded:
            module_name, _, attribute = self._entries[name].partition(":")
            module: Any = importlib.import_module(module_name)
            self._loaded[name] = getattr(module, attribute)
        return self._loaded[name]
