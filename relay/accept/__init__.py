"""The accept path: sender policy, categories, send metadata, and the acceptor that makes a message durable."""
