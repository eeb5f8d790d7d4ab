"""The control surface operators work through: explain, lint, catalog, validate, report."""
