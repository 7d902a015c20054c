"""The cloud ingester: the last hop, from the cloud broker into a sink.

In: every data message of the fleet (`saltmarsh/v1/<site>/<device>/<channel>`) from the cloud
Mosquitto, through an MQTT 5 shared subscription at QoS 1 on a persistent session, so that
several ingesters split the stream and a restarted one gets its unacked messages back.

Out: validated envelopes and dead letters (reason, field, raw payload) committed to the sink
chosen by `saltmarsh.sinks.open_sink`, one transaction per batch; each message is acked to the
broker only after its batch is durable. Counters go to a status file.

The parts, wired together in `service.run` and driven by one loop thread: `consumer` (the MQTT
connection: read, ack) -> `validate` (pure) -> `batcher` (batch, write, then ack).
"""

from cloud_ingester.service import main, run

__all__ = ["main", "run"]
