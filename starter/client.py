"""Compatibility path: the client lives in `dunning.cases.client`."""

from dunning.cases.client import CaseNotFound, CaseRequest, DunningClient, StartResult, TopUpResult

__all__ = ["CaseNotFound", "CaseRequest", "DunningClient", "StartResult", "TopUpResult"]
