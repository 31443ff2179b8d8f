"""Feedback pool (see ragfleet.feedback)."""
