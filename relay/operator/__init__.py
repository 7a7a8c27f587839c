"""The operator plane: event bus and stream, metrics, health, doctor."""
