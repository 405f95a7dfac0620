"""Job type -> handler, built from the modules that declare handlers with ``jobq.handler``.

The worker's own handlers (``services.worker.builtin``) and the user's (``--handlers`` /
``JOBQ_HANDLERS``: modules of the user's package, imported with the working directory on the
path) are found the same way: by the mark ``@handler`` leaves on each function
(``jobq.handlers.load``, which ``jobq-http-worker`` uses too).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jobq.handlers import Handler, HandlerModuleError, add, load

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
        try:
            add(self._handlers, handler)
        except HandlerModuleError as exc:
            raise ConfigError(str(exc)) from None

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
            (d["name"], d["schema"], d["defaults"])
            for d in (self._handlers[name].described() for name in self.names())
        ]

    @classmethod
    def from_modules(cls, modules: Iterable[str]) -> Registry:
        """The handlers of ``modules``; a module that cannot be imported, or declares no
        handler, is a ``ConfigError`` naming it."""
        try:
            return cls(load(modules))
        except HandlerModuleError as exc:
            raise ConfigError(str(exc)) from None
