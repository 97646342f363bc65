"""Renderers of the documentation's generated pages (see docs/generate.py)."""
