"""The admin listener: the REST API, /metrics, /healthz, /readyz and the web console."""
