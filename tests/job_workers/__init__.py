"""Tiny job workers for tests/test_jobs.py: job mechanics without the cost of importing torch."""
