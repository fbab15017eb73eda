"""Fuzz harnesses (hypothesis) for the parsers that read untrusted input; run by tests/test_fuzz.py."""
