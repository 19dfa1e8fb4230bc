"""Clients for billing systems."""

from starter.client import CaseNotFound, CaseRequest, DunningClient, StartResult, TopUpResult

__all__ = ["CaseNotFound", "CaseRequest", "DunningClient", "StartResult", "TopUpResult"]
