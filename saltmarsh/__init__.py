"""saltmarsh: the shared core of the fleet, in the order a reading travels.

- `contract`: topics, the envelope, minting `(device, boot, seq)`, every exception.
- `mqtt`: the lean MQTT 5 wire client (hot paths) and the paho adapter (the sensor), one
  delivery rule for both.
- `runtime`: the crash-safe spool, status files, logs, the daemon shell, backoff.
- `config`: one typed, validated config object per service, one TOML loader.
- `sinks`: SQLite (the embedded default) or Elasticsearch as the store of record, Kinesis beside.
- `relay`: the Salt master's event bus to Elasticsearch and Kinesis.
- `ops`: the operator's tools: the CLI, audit, pillar, and the local-fleet harness.

The hops themselves live beside this package: sensor/ -> gateway/ -> cloud-ingester/.
"""
