"""Sinks: where the ingester commits messages. `open_sink` picks the backend from config."""
