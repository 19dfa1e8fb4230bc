"""Pure values and rules: the Temporal contract, money, templates, segments, quiet hours, phones.

Sandbox-safe: stdlib, temporalio.common and phonenumbers only; no I/O, no clock."""
