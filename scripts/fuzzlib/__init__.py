"""The hostile-input battery behind ``scripts/fuzz`` (see ``__main__``)."""
