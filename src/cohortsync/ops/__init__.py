"""The control surface: what operators run on a project (lock, plan, catalog, …)."""
