"""What the edge tells: Prometheus metrics, traces, the usage ledger and the observations it reports."""
