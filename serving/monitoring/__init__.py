"""What the server reports about itself and its inputs: Prometheus metrics, drift, and the alert rules."""
