"""Payload conversion. (The encrypting codec is added by the PII issue.)"""

from __future__ import annotations

from temporalio.converter import DataConverter

from dunning.settings import Settings


def converter_for(settings: Settings) -> DataConverter:
    return DataConverter.default
