"""Recorded histories of DunningWorkflow for the replay tests (see record.py)."""
