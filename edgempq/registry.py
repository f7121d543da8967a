"""Plugins by name: sensitivity methods, PTQ weight algorithms, backends. An unknown name lists
the valid ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> plugin table for one kind of plugin (e.g. "sensitivity method")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self.failed: dict[str, str] = {}  # third-party plugin -> why it did not load

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering a plugin under `name`; a name can be taken only once."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """The plugin called `name`, or a ConfigError listing the valid names."""
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items)) or "(none)"
            broken = "".join(f"; installed plugin {k} did not load ({v})" for k, v in sorted(self.failed.items()))
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {valid}{broken}") from None

    def names(self) -> list[str]:
        """The registered plugin names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


def load_entry_points(group: str, registry: Registry) -> None:
    """Import the third-party plugins installed for `group` (entry points `edgempq.methods`,
    `edgempq.ptq`, `edgempq.backends`): each names a module, or an object in one, whose import
    registers the plugin with the registry's decorator. One that fails to import is kept in
    `registry.failed` and named when a lookup fails, so the built-ins keep working."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=group):
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001 - a third party's module may raise anything
            registry.failed[ep.name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
