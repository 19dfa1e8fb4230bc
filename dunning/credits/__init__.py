"""SMS credits: the ledger, refill, follow-ups and waking paused cases."""
