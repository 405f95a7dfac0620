"""Request bodies: duplicate keys anywhere are refused, and values are never coerced."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar.exceptions import ClientException, ValidationException

from services.api.bodies import JSON_MEDIA, decode_strict, reject_duplicate_keys
from services.api.schemas import BatchIn, JobIn
from services.api.submission import ESCAPED_NUL

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


def with_duplicate(value: Any, path: list[int], key: str) -> str:
    """``value`` as JSON text, with ``key`` written twice into the first object along ``path``
    (or into a new object wrapping it)."""
    if isinstance(value, dict) and (not path or not value):
        members = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()]
        members += [f"{json.dumps(key)}: 1", f"{json.dumps(key)}: 2"]
        return "{" + ", ".join(members) + "}"
    children = list(value.values()) if isinstance(value, dict) else value
    if isinstance(children, list) and children and path:
        i = path[0] % len(children)
        parts = [
            with_duplicate(c, path[1:], key) if n == i else json.dumps(c)
            for n, c in enumerate(children)
        ]
        if isinstance(value, dict):
            keys = list(value)
            return (
                "{"
                + ", ".join(f"{json.dumps(k)}: {p}" for k, p in zip(keys, parts, strict=True))
                + "}"
            )
        return "[" + ", ".join(parts) + "]"
    return "{" + f'"wrapped": {json.dumps(value)}, {json.dumps(key)}: 1, {json.dumps(key)}: 2' + "}"


@given(JSON_VALUES)
def test_json_without_duplicate_keys_passes(value: Any) -> None:
    reject_duplicate_keys(json.dumps(value).encode())


@given(JSON_VALUES, st.lists(st.integers(0, 10), max_size=4), st.text(max_size=4))
def test_a_duplicate_key_at_any_depth_is_refused(value: Any, path: list[int], key: str) -> None:
    text = with_duplicate(value, path, key)
    with pytest.raises(ClientException, match="duplicate key"):
        reject_duplicate_keys(text.encode())


@pytest.mark.parametrize(
    "body", [b"", b"{", b'{"a": 1,}', b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b"nul\x00"]
)
def test_what_is_not_json_is_a_400(body: bytes) -> None:
    with pytest.raises(ClientException) as refused:
        reject_duplicate_keys(body)
    assert refused.value.status_code == 400


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"type": "noop", "priority": "5"}', "priority"),
        (b'{"type": "noop", "max_attempts": "3"}', "max_attempts"),
        (b'{"type": "noop", "timeout_seconds": 10.0}', "timeout_seconds"),
        (b'{"type": "noop", "delay_seconds": "1.5"}', "delay_seconds"),
        (b'{"type": "noop", "priority": true}', "priority"),
        (b'{"type": 5}', "type"),
    ],
)
def test_values_of_the_wrong_json_type_are_422_naming_the_field(body: bytes, field: str) -> None:
    with pytest.raises(ValidationException) as refused:
        decode_strict(body, JobIn)
    assert refused.value.extra == [
        {"message": refused.value.extra[0]["message"], "key": field, "source": "body"}  # type: ignore[index]
    ]


def test_a_field_deep_in_a_batch_is_named() -> None:
    with pytest.raises(ValidationException) as refused:
        decode_strict(b'{"jobs": [{"type": "noop"}, {"type": "noop", "priority": "1"}]}', BatchIn)
    assert refused.value.extra[0]["key"] == "jobs[1].priority"  # type: ignore[index]


def test_an_integer_is_a_valid_float() -> None:
    assert decode_strict(b'{"type": "noop", "delay_seconds": 2}', JobIn).delay_seconds == 2.0


@pytest.mark.parametrize(
    ("media", "json_"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/problem+json", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("application/jsonx", False),
        ("", False),
        ("multipart/form-data; boundary=json", False),
    ],
)
def test_json_media_types(media: str, json_: bool) -> None:
    assert bool(JSON_MEDIA.match(media)) is json_


@given(st.text())
def test_a_nul_is_found_in_json_text_exactly_when_a_string_holds_one(text: str) -> None:
    """PostgreSQL's jsonb holds no NUL; an escaped backslash before ``u0000`` is not one."""
    encoded = msgspec.json.encode({text: [text]}).decode()
    assert bool(ESCAPED_NUL.search(encoded)) == ("\x00" in text)


@pytest.mark.parametrize("text", ["C:\\u0000dir", "\\\\u0000", "\\\x00", "a\x00"])
def test_backslashes_before_u0000(text: str) -> None:
    encoded = msgspec.json.encode(text).decode()
    assert bool(ESCAPED_NUL.search(encoded)) == ("\x00" in text)
