"""The cloud ingester: the last hop, from the cloud broker into a sink.

In: every data message of the fleet (`saltmarsh/v1/<site>/<device>/<channel>`) from the cloud
Mosquitto, through an MQTT 5 shared subscription at QoS 1 on a persistent session, so that
several ingesters split the stream and a restarted one gets its unacked messages back.

Out: validated envelopes and dead letters (reason, field, the payload's first KiB, its size and
sha256) committed to the sink chosen by `saltmarsh.sinks.open_sink`, one transaction per batch;
each message is acked to the broker only after its batch is durable, and confirmed then to the
forwarder that sent it, on that gateway's `ack` topic (ranges of its `msg` numbers), so that the
gateway can delete it. A message published retained is refused as a dead letter, once.
Confirmations and commands seen under the shared subscription are not data: skipped, counted. Counters go
to a status file.

The stages, each testable alone, wired together in `service.pump` and driven by one loop thread:
`consumer` (the MQTT connection: read) -> `validate` (pure: outcomes) and `confirm` (pure: whom
to confirm to) -> `batcher` (batch and write to the sink; returns what is durable) ->
`consumer.confirm` and `consumer.ack`.
"""

from cloud_ingester.service import main, run

__all__ = ["main", "run"]
