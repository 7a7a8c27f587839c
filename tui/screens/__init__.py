"""One module per screen; ``ConsoleScreen`` is their common frame (status bar, body, footer)."""
