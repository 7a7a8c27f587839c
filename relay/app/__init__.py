"""Wiring: the frozen Services, the supervisor that binds, builds and starts them, the CLI."""
