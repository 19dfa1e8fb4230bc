"""Alembic environment: runs on the connection handed over by Database.upgrade(), or a URL."""

from __future__ import annotations

from alembic import context

from dunning.platform.db.engine import make_engine
from dunning.platform.db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    # The engine's own set-up (for SQLite: a 0600 file, 0700 directories it creates).
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "", pool_size=1)
    with engine.begin() as conn:
        context.configure(
            connection=conn,
            target_metadata=target_metadata,
            render_as_batch=conn.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations()
