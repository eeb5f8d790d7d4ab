"""Real time: per-profile evaluation as events arrive, timers for windows that close, cadences."""
