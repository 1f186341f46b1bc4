"""Evaluation loops that scripts and tests share (prompt following on shapes)."""
