"""Destinations: one module per system behind one protocol (base.py)."""
