"""Operator surfaces: models (list, load, unload, defaults, status), the prompt cache, usage and metrics."""
