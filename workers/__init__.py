"""Celery wiring: the app built from Settings, routing, per-process warm-up and the beat schedule."""
