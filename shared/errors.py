"""jobq's exception tree: each class's docstring is its default message."""

from __future__ import annotations

from jobq.handlers import InvalidPayload as InvalidPayload  # the SDK's, for the webhook too
from jobq.handlers import PermanentError


class JobqError(Exception):
    """Unexpected jobq error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class ConfigError(JobqError):
    """jobq is misconfigured."""


class DependencyUnavailable(JobqError):
    """PostgreSQL or RabbitMQ cannot be reached."""


class PermanentFailure(JobqError, PermanentError):
    """The job cannot succeed by running again (handlers raise ``jobq.PermanentError``)."""


class UnknownJobType(PermanentFailure):
    """No handler is registered for this job type."""


class DecodeError(JobqError):
    """A broker message is not a jobq ticket."""


class IllegalTransition(JobqError):
    """The job state machine does not allow this move."""


class UndeclaredQueue(JobqError):
    """A job names a queue no operator declared."""

    def __init__(self, queue: str) -> None:
        super().__init__(f"queue {queue!r} is not declared")
        self.queue = queue


class QueueInUse(JobqError):
    """A queue still has unfinished jobs or consumers, so it cannot be deleted."""


class IdempotencyKeyReused(JobqError):
    """An idempotency key already named a job made by a different request."""

    def __init__(self, key: str) -> None:
        super().__init__("this Idempotency-Key was used with a different request")
        self.key = key


class InvalidDependencies(JobqError):
    """A job's dependencies name jobs the tenant has not, or form a cycle."""

    def __init__(self, message: str, key: str = "depends_on") -> None:
        super().__init__(message)
        #: The request field at fault.
        self.key = key


class TopologyMismatch(ConfigError):
    """A broker queue exists with other arguments than the settings ask for; RabbitMQ cannot
    change a queue's type or arguments in place (docs/design.md §4)."""
