"""Temporal activities: all I/O of a dunning case."""

from activities.dunning import DunningActivities

__all__ = ["DunningActivities"]
