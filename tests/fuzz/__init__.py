"""Fuzz tests: generated specs and HTTP traffic against the real spec loader, replica and gateway."""
