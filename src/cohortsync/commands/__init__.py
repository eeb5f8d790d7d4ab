"""The `cohortsync` commands beyond the core ones of `cli.py`, one module per command family."""
