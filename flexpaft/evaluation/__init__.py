"""Evaluation under many templates, scoring, and robustness metrics."""
