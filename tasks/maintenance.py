"""Maintenance pool: reindex and the nightly golden-set evaluation."""
