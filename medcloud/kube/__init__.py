"""Thin helpers that talk to the Kubernetes API; the decisions live elsewhere."""
