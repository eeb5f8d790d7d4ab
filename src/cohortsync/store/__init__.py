"""The store: schema, migrations and the repository the rest of cohortsync uses."""
