"""The control surface operators work through: lock and catalog, lint, validate, explain."""
