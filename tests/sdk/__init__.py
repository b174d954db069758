"""Helpers for the official Backend.AI SDK acceptance tests (``tests/test_sdk.py``)."""
