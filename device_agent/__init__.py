"""Long-running device agent (MQTT telemetry, jobs, model versions). Torch-free."""
