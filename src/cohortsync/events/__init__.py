"""Events: Segment-spec message models, validation, and file readers."""
