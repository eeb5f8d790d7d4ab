"""Sync: the outbox, the planner, the delivery worker and its retry policy."""
