"""Thin task definitions: validate a pydantic payload, call a ragfleet service, return JSON.

One module per pool. Every task takes one keyword argument, `payload` (a JSON object documented in
docs/tasks.md), so producers in any language can send it by name.
"""
