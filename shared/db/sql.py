"""What the job stores share: statement text built once, and a job row."""

from __future__ import annotations

import functools
from typing import Any, TypeAlias

import sqlalchemy as sa


@functools.cache
def statement(text: str, *json_columns: str) -> sa.TextClause | sa.TextualSelect:
    """A textual statement, built once per distinct text: building one parses its bind
    parameters, which costs more than running a small statement."""
    clause = sa.text(text)
    return clause.columns(**dict.fromkeys(json_columns, sa.JSON)) if json_columns else clause


#: A row of ``jobs`` with its columns as attributes (the names ``Job`` declares). Reads hand
#: out rows, not ``Job`` instances: building an ORM instance costs ~100 µs a row, more than
#: the query.
JobRow: TypeAlias = sa.Row[Any]
