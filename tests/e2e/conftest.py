"""Fixtures of the end-to-end tests: the tiny runs are session fixtures in tests/conftest.py."""
