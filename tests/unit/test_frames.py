"""The hand-built publish frames are byte for byte what pamqp (aiormq's codec) would send."""

from __future__ import annotations

import pamqp.frame
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands, header
from pamqp.body import ContentBody

from shared import frames

exchanges = st.from_regex(r"[-a-zA-Z0-9_.:]{1,127}", fullmatch=True)
names = st.text(min_size=1, max_size=60).filter(lambda s: len(s.encode()) <= 255)
HEADERS = [
    "traceparent", "tracestate", "x-jobq-job-id", "x-jobq-type", "x-jobq-tenant",
    "x-jobq-attempt", "x-jobq-queue", "x-jobq-reason", "x-jobq-error-type",
]  # fmt: skip
header_values = st.dictionaries(
    st.sampled_from(HEADERS),
    st.one_of(st.text(max_size=300), st.integers(-(2**63), 2**63 - 1)),
    max_size=len(HEADERS),
)


def pamqp_publish(
    channel: int,
    exchange: str,
    key: str,
    body: bytes,
    max_content: int,
    properties: commands.Basic.Properties,
) -> bytes:
    parts: list[pamqp.frame.FrameTypes] = [
        commands.Basic.Publish(exchange=exchange, routing_key=key, mandatory=True),
        header.ContentHeader(body_size=len(body), properties=properties),
        *(ContentBody(body[i : i + max_content]) for i in range(0, len(body), max_content)),
    ]
    return b"".join(pamqp.frame.marshal(p, channel) for p in parts)


@given(
    channel=st.integers(1, 2047),
    exchange=exchanges,
    key=names,
    body=st.binary(max_size=400),
    max_content=st.integers(16, 200),
    message_id=names,
    message_type=names,
    priority=st.integers(0, 9),
    headers=header_values,
)
def test_publish_matches_pamqp(
    channel: int,
    exchange: str,
    key: str,
    body: bytes,
    max_content: int,
    message_id: str,
    message_type: str,
    priority: int,
    headers: dict[str, str | int],
) -> None:
    ours = frames.publish(
        channel, exchange, key, body, max_content=max_content, message_id=message_id,
        message_type=message_type, priority=priority, headers=headers,
    )  # fmt: skip
    properties = commands.Basic.Properties(
        content_type="application/json",
        delivery_mode=2,
        priority=priority,
        message_id=message_id,
        message_type=message_type,
        headers=dict(headers),
    )
    assert ours == pamqp_publish(channel, exchange, key, body, max_content, properties)


def test_a_short_string_over_255_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="255 bytes"):
        frames.publish(
            1, "jobq.jobs", "q", b"{}", max_content=100,
            message_id="é" * 128, message_type="t", priority=0, headers={},
        )  # fmt: skip
