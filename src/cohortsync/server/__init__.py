"""The HTTP server: Segment-compatible ingest (and later the admin API and dashboard)."""
