"""The dunning engine: durable payment reminders by email and SMS on Temporal."""

__version__ = "0.1.0"
