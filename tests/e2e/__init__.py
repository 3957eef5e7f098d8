"""End-to-end tests: real servers on loopback ports."""
