"""Persistence: typed models, engine set-up and migrations."""

from dunning.platform.db.engine import Database, make_engine
from dunning.platform.db.models import Base

__all__ = ["Base", "Database", "make_engine"]
