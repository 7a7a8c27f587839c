"""Outbound delivery: routing, sessions to remote MXs, retries and bounces (DESIGN §5)."""
