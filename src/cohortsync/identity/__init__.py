"""Identity: normalisation of identifiers and the graph that merges them into profiles."""
