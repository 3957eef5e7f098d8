"""Handlers by event name: `@on("transaction.execute")` registers a plain function, unchanged."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from rehive_client import RehiveClient
from webhooks.events import Event

Handler = Callable[[Event, RehiveClient], None]
H = TypeVar("H", bound=Handler)
ANY_EVENT = "*"


class Registry:
    """Event name -> handlers; a registry with a `parent` also runs the parent's handlers."""

    def __init__(self, parent: Registry | None = None) -> None:
        self.parent = parent
        self._handlers: dict[str, list[Handler]] = {}

    def on(self, *names: str) -> Callable[[H], H]:
        """Register the decorated function for each event name (`"*"` means every event)."""
        if not names or not all(isinstance(name, str) and name for name in names):
            raise ValueError("on() needs one or more event names")

        def decorator(handler: H) -> H:
            for name in names:
                self.add(name, handler)
            return handler

        return decorator

    def add(self, name: str, handler: Handler) -> None:
        """Register `handler` for the event `name`; registering it twice changes nothing."""
        handlers = self._handlers.setdefault(name, [])
        if handler not in handlers:
            handlers.append(handler)

    def has_named(self, name: str) -> bool:
        """Tell whether a handler is registered for `name` by that name (not only through "*")."""
        return (name != ANY_EVENT and bool(self._handlers.get(name))) or bool(
            self.parent and self.parent.has_named(name)
        )

    def names(self) -> list[str]:
        """Return every event name a handler is registered for by name (not "*"), sorted."""
        found = set(self.parent.names()) if self.parent else set()
        found.update(name for name, handlers in self._handlers.items() if handlers and name != ANY_EVENT)
        return sorted(found)

    def handlers_for(self, name: str) -> list[Handler]:
        """Return the handlers to run for event `name`, in registration order, parent's first."""
        found = self.parent.handlers_for(name) if self.parent else []
        for handler in self._handlers.get(name, []) + self._handlers.get(ANY_EVENT, []):
            if handler not in found:
                found.append(handler)
        return found


registry = Registry()
on = registry.on
