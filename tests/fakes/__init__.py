"""Real servers on loopback that answer like the providers (the machine's edge)."""
