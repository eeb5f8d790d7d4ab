"""The control surface operators work through: lint, lock and catalog, validate, explain."""
