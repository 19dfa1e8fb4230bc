"""Temporal workflows (deterministic code only)."""

from workflows.dunning import DunningWorkflow

__all__ = ["DunningWorkflow"]
