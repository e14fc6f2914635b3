"""Experiment commands that use the library (run from the repository root: python -m experiments.NAME)."""
