"""cohortsync: a self-hosted retention data-out engine."""

__version__ = "0.1.0"
