"""The message log and everything that moves a `messages` row: inbound replies, delivery reports,
the provider inbox and the send pacing."""
