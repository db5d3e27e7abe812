"""The processes: the server that wires the data plane, the state and the admin API
together, workers and their supervisor, listeners, takeovers, `router serve` and
`router demo`."""
