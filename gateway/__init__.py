"""The gateway forwarder: the site's store-and-forward hop.

In:  every message on the site Mosquitto under `saltmarsh/v1/{site}/#`, received at QoS 1 on a
     persistent session and acknowledged only once it is durably in the spool; then confirmed
     to its sender on the device's `ack` topic. `status`, `cmd` and `ack` stay on the site;
     every other channel, known or not, is forwarded (the cloud ingester dead-letters what it
     cannot read, so bad input stays visible).
Out: the same topic and payload on the cloud broker at QoS 1, MQTT 5, tagged with the user
     properties `gw=<gateway_id>` and `msg=<run>:<n>`; a segment leaves the spool only when the
     ingesters have confirmed, on this gateway's `ack` topic, that the sink committed all of it
     (`saltmarsh.contract.confirmation`, `saltmarsh.runtime.unconfirmed`). At most a window of
     messages is out unconfirmed. After an outage live traffic goes first and the backlog
     drains at `drain_rate_limit`, alerts and events before readings. Counters go to
     `<status_dir>/forwarder-<gateway_id>.json`.

Parts, each testable alone, wired in `service.run` in the order the data flows:
- `source`: the site subscription; PUBLISHes gathered into batches, PUBACKed once spooled.
- `committer`: group commit of each batch into `saltmarsh.runtime.spool`, one fsync per batch,
  carrying the deletes of delivered segments.
- `sender`: spooled segments up to the uplink, live first, the backlog under `token_bucket`
  and `schedule`, within the unconfirmed window; confirmations from the ingesters delete them.
- `connector`: (re)connects a link from a helper thread, with `saltmarsh.runtime.backoff`.
- `loop`: the one thread that owns both connections and carries the hand-offs between them.
Later hops plug in beside them: a downlink relay for commands, a BLE collector feeding the
source.
"""

from gateway.schedule import Phase, SendQueue, batch_size
from gateway.service import main, run
from gateway.source import lane_for
from gateway.token_bucket import TokenBucket

__all__ = ["Phase", "SendQueue", "TokenBucket", "batch_size", "lane_for", "main", "run"]
