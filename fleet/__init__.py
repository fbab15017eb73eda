"""Fleet collector: MQTT telemetry to Prometheus, a dashboard and a CLI."""
