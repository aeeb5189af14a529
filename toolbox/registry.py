"""Typed registries: the decorator that defines a component is its registry entry."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

from toolbox.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to the frozen config dataclasses of one kind of component.

    On first lookup it imports every public module and subpackage of its package, so adding a
    component is one new file (or folder): it registers itself when imported. Of a subpackage
    only its ``__init__`` is imported, which registers the config and stays torch-free; its
    torch code lives in sibling modules (``network.py``) that ``build()`` imports. Names that
    start with an underscore are skipped.
    """

    def __init__(self, kind: str, package: str, base: type[T], option: str) -> None:
        self.kind = kind
        self.package = package
        self.base = base
        self.option = option  # the command-line selector, e.g. "--arch"
        self._entries: dict[str, type[T]] = {}
        self._imported = False

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            if name in self._entries:
                existing = self._entries[name]
                raise ValueError(
                    f"{self.kind} {name!r} is registered twice: by "
                    f"{existing.__module__}.{existing.__qualname__} and by "
                    f"{cls.__module__}.{cls.__qualname__}; rename one of them."
                )
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{self.kind} {name!r} must subclass {self.base.__name__}.")
            # Read the class's own dataclass parameters: a subclass left without the decorator
            # inherits its base's, and its annotated fields would silently not be options.
            params = cls.__dict__.get("__dataclass_params__")
            if params is None or not params.frozen:
                raise TypeError(
                    f"{self.kind} {name!r} must be a frozen dataclass: decorate "
                    f"{cls.__qualname__} with @dataclass(frozen=True)."
                )
            cls.registered_name = name
            self._entries[name] = cls
            return cls

        return decorator

    def _import_package(self) -> None:
        if self._imported:
            return
        self._imported = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self.package}.{module.name}")
        from toolbox.plugins import load_installed_plugins

        load_installed_plugins()  # installed packages' components are known by name too

    def names(self) -> list[str]:
        self._import_package()
        return sorted(self._entries)

    def get(self, name: str) -> type[T]:
        self._import_package()
        if name not in self._entries:
            raise UserError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return (
            f"{self.option}: unknown {self.kind} {name!r}.{hint} "
            f"Choose one of: {', '.join(self.names())}."
        )

    def name_of(self, config: T) -> str:
        return type(config).registered_name

    def __contains__(self, name: str) -> bool:
        self._import_package()
        return name in self._entries
