"""How a daemon runs: start-up, listeners, TLS, supervision, health, durable writes."""
