"""A destination written outside cohortsync, as a third-party package would ship it."""
