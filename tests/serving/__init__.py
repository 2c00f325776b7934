"""Tests of the inference service (issue 3)."""
