"""The routing state and how it changes: operations, the release and its ramp, history,
the store, metrics of both (per change, never per request)."""
