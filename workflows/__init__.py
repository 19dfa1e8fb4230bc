"""Temporal workflows (deterministic code only).

This file imports nothing on purpose. Temporal's sandbox re-imports a workflow's module for
every workflow run, and that re-runs this package's `__init__` too: importing the workflows here
made every dunning case also re-import the compliance reply workflow. The package's names
(`from workflows import DunningWorkflow`) are looked up on first use instead (PEP 562).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workflows.dunning import DunningWorkflow
    from workflows.reply import ComplianceReplyWorkflow

__all__ = ["ComplianceReplyWorkflow", "DunningWorkflow"]

_HOMES = {"DunningWorkflow": "workflows.dunning", "ComplianceReplyWorkflow": "workflows.reply"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'workflows' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(home), name)
