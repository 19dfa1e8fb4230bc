"""Temporal workflows (deterministic code only)."""

from workflows.dunning import DunningWorkflow
from workflows.reply import ComplianceReplyWorkflow

__all__ = ["ComplianceReplyWorkflow", "DunningWorkflow"]
