"""Persistence: typed models, engine set-up and migrations."""

from dunning.platform.db.engine import Database, insert_for, make_engine
from dunning.platform.db.models import Base

__all__ = ["Base", "Database", "insert_for", "make_engine"]
