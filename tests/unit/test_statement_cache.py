"""The statements run on psycopg's cursor on every send stay short enough for psycopg's query
cache: longer ones are re-parsed by regular expressions on every execution (it cost a third of
a one-trip debit's client CPU when the statement was 15 characters over)."""

from __future__ import annotations

import itertools

from psycopg import _queries
from sqlalchemy.dialects import postgresql

from dunning.credits import ledger
from dunning.messages import log as message_log
from dunning.platform.db import compiled_sql


def test_the_ledger_statements_fit_psycopg_query_cache() -> None:
    dialect = postgresql.psycopg.dialect()
    limit = _queries.MAX_CACHED_STATEMENT_LENGTH
    lengths: dict[object, int] = {}
    for debit, fair, dequeue, newcomer in itertools.product((False, True), repeat=4):
        (stmt,) = ledger._statements(debit, fair, dequeue, True, newcomer)
        lengths[(debit, fair, dequeue, newcomer)] = len(compiled_sql(stmt, dialect)[0])
    (one_trip,) = ledger._statements(True, True, False, True, True,
                                     message_log._inserted_by_debit)
    lengths["one trip"] = len(compiled_sql(one_trip, dialect)[0])
    assert lengths["one trip"] > lengths[(True, True, True, True)]  # the claim is in it
    assert max(lengths.values()) <= limit, lengths
