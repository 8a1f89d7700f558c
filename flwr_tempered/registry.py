"""Name registries: how run configs and the command line say ``rule = "balance"``.

One :class:`Registry` per kind of component (rules, attacks, topologies) maps names to
constructors and builds them from keyword parameters, failing early with a ``ValueError``
that lists what is valid when a name or a parameter is misspelt or missing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

FactoryT = TypeVar("FactoryT", bound=Callable[..., Any])


class Registry(Generic[FactoryT]):
    """Names of one kind of component (``kind``, e.g. ``"rule"``) and their constructors
    (classes or factory functions)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, FactoryT] = {}

    def add(self, name: str, factory: FactoryT) -> FactoryT:
        """Register ``factory`` under ``name``; a name can be taken only once."""
        if name in self._entries:
            raise ValueError(
                f"{self.kind} name {name!r} is already registered by {self._entries[name]}"
            )
        self._entries[name] = factory
        return factory

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def factory(self, name: str) -> FactoryT:
        """The constructor registered as ``name``; ``ValueError`` listing the valid names."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown {self.kind} {name!r}; available {self.kind}s: {', '.join(self.names())}"
            ) from None

    def parameters(self, name: str) -> dict[str, Any]:
        """The constructor parameters of ``name`` with their defaults
        (``inspect.Parameter.empty`` when required)."""
        signature = inspect.signature(self.factory(name))
        return {
            p.name: p.default
            for p in signature.parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    def build(self, name: str, **params: Any) -> Any:
        """Call the constructor of ``name`` with ``params`` after checking their names."""
        factory = self.factory(name)
        accepted = self.parameters(name)
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise ValueError(
                f"{self.kind} {name!r} has no parameter(s) {', '.join(unknown)}; "
                f"its parameters: {', '.join(accepted) or '(none)'}"
            )
        missing = [
            p for p, default in accepted.items()
            if default is inspect.Parameter.empty and p not in params
        ]
        if missing:
            raise ValueError(
                f"{self.kind} {name!r} needs parameter(s) {', '.join(missing)}; "
                f"its parameters: {', '.join(accepted)}"
            )
        return factory(**params)
