"""What the proxy tells its operators: the event stream, Prometheus metrics, the sightings ledger."""
