"""Evaluation: reconstruction metrics."""
