"""Real programs the tests talk to (DESIGN §8), started by the tests themselves on loopback."""
