"""Benchmarks for ``scripts/bench``: the relay beside a private Postfix instance, measured in the same run."""
