"""Persistence: typed models, engine set-up and migrations."""

from dunning.platform.db.engine import (
    Database,
    PreparedStatementLost,
    commits_in_one_trip,
    compiled_sql,
    execute_on_driver,
    insert_for,
    make_engine,
)
from dunning.platform.db.models import Base

__all__ = [
    "Base", "Database", "PreparedStatementLost", "commits_in_one_trip", "compiled_sql",
    "execute_on_driver", "insert_for", "make_engine",
]
