"""Audiences: segment − exclusions, the holdout split, membership history and its diff."""
