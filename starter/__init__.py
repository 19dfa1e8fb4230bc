"""Clients for billing systems."""

from dunning.cases.client import CaseNotFound, CaseRequest, DunningClient, StartResult, TopUpResult

__all__ = ["CaseNotFound", "CaseRequest", "DunningClient", "StartResult", "TopUpResult"]
