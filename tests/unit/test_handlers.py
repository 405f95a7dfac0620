"""``@jobq.handler``: what it records of a function, and the settings' flags."""

from __future__ import annotations

import uuid
from typing import Any

import jobq
import msgspec
import pytest
from jobq.handlers import MARK, Handler

from shared.config import Settings
from shared.errors import ConfigError


class Resize(msgspec.Struct):
    url: str
    width: int = 128


@jobq.handler("images.resize", queue="media", max_attempts=5, timeout=120, retry_backoff=1.5)
async def resize(payload: Resize, ctx: jobq.JobContext) -> None: ...


@jobq.handler
def anything(payload: Any) -> None: ...


def mark(func: Any) -> Handler:
    handler: Handler = getattr(func, MARK)
    return handler


class Opaque:
    """A class msgspec cannot describe."""


@jobq.handler("opaque.object")
def takes_object(payload: object) -> None: ...


@jobq.handler("opaque.class")
def takes_class(payload: Opaque) -> None: ...


def test_a_payload_msgspec_cannot_describe_has_the_empty_schema() -> None:
    for func in (takes_object, takes_class):
        assert mark(func).schema() == {}
        assert mark(func).described() == {"name": mark(func).name, "schema": {}, "defaults": {}}


def test_a_handler_carries_its_schema_and_defaults() -> None:
    h = mark(resize)
    assert (h.name, h.wants_context, h.is_async) == ("images.resize", True, True)
    assert h.defaults.as_fields() == {
        "queue": "media", "max_attempts": 5, "timeout_seconds": 120, "retry_backoff_seconds": 1.5,
    }  # fmt: skip
    schema = h.schema()
    assert schema["$defs"]["Resize"]["required"] == ["url"]
    bare = mark(anything)
    assert bare.name == f"{__name__}.anything"
    assert (bare.schema(), bare.defaults.as_fields(), bare.is_async) == ({}, {}, False)


def test_progress_is_a_fraction() -> None:
    seen: list[Any] = []
    ctx = jobq.JobContext(uuid.uuid4(), "t", "x", 1, 3, uuid.uuid4(), reporter=seen.append)
    ctx.progress(0.5, "half")
    assert (seen[0].fraction, seen[0].message) == (0.5, "half")
    with pytest.raises(ValueError, match="between 0 and 1"):
        ctx.progress(1.5)


@pytest.mark.parametrize(
    ("raw", "value"), [("true", True), ("ON", True), ("0", False), ("no", False)]
)
def test_flags_read_as_booleans(raw: str, value: bool) -> None:
    assert Settings.from_env({"JOBQ_STRICT_TYPES": raw}).strict_types is value


def test_a_flag_that_is_not_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="JOBQ_STRICT_TYPES='maybe'"):
        Settings.from_env({"JOBQ_STRICT_TYPES": "maybe"})
