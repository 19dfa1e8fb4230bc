"""Persistence: typed models, engine set-up and migrations."""

from dunning.db.engine import Database, make_engine
from dunning.db.models import Base

__all__ = ["Base", "Database", "make_engine"]
