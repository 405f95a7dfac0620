"""Job type → handler, built from the modules that declare handlers with ``jobq.handler``.

The worker's own handlers (``services.worker.builtin``) and the user's (``--handlers`` /
``JOBQ_HANDLERS``: modules of the user's package, imported with the working directory on the
path) are found the same way: by the mark ``@handler`` leaves on each function.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable
from typing import Any

from jobq.handlers import Handler, handlers_in

from shared.errors import ConfigError, UnknownJobType

#: The handlers every worker serves (``webhook`` joins them at start: it needs the settings).
BUILTIN = "services.worker.builtin"


class Registry:
    """Job type -> handler."""

    def __init__(self, handlers: Iterable[Handler] = ()) -> None:
        self._handlers: dict[str, Handler] = {}
        for h in handlers:
            self.add(h)

    def add(self, handler: Handler) -> None:
        known = self._handlers.get(handler.name)
        if known is not None and known.func is not handler.func:
            raise ConfigError(
                f"job type {handler.name!r} has two handlers: {_where(known)} and {_where(handler)}"
            )
        self._handlers[handler.name] = handler

    def get(self, name: str) -> Handler:
        try:
            return self._handlers[name]
        except KeyError:
            raise UnknownJobType(f"no handler registered for job type {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def described(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """``(name, payload JSON Schema, defaults)`` of every handler, for ``job_types``."""
        return [
            (h.name, h.schema(), h.defaults.as_fields())
            for h in sorted(self._handlers.values(), key=lambda h: h.name)
        ]

    @classmethod
    def from_modules(cls, modules: Iterable[str]) -> Registry:
        """The handlers of ``modules``; a module that cannot be imported, or declares no
        handler, is a ``ConfigError`` naming it."""
        if os.getcwd() not in sys.path:  # the user's package, where ``jobq worker`` runs
            sys.path.insert(0, os.getcwd())
        registry = cls()
        for name in modules:
            try:
                module = importlib.import_module(name)
            except Exception as exc:
                raise ConfigError(
                    f"cannot import handler module {name!r}: {type(exc).__name__}: {exc}"
                ) from None
            found = handlers_in(module)
            if not found:
                raise ConfigError(f"module {name!r} declares no handler (use @jobq.handler)")
            for h in found:
                registry.add(h)
        return registry


def _where(handler: Handler) -> str:
    return f"{handler.func.__module__}.{handler.func.__qualname__}"
