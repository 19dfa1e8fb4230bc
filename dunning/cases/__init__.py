"""Dunning cases: the client billing systems use, and the recovery report."""
