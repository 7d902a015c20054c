"""Command state per target, as a sink keeps it: one record per (cmd_id, device), from `cmdres`.

In: the deliveries of a batch. Out: a `CommandRecord` for each command outcome among them,
which the sink upserts beside the message itself, in the same transaction. The rank rule is
the contract's (`saltmarsh.contract.command_state.advances`): a record replaces the stored one
only if its rank is higher and the stored one is not final, so a late or repeated outcome, or
one that overtook another on the way, never moves a target's state backwards.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from saltmarsh.contract.topics import Channel
from saltmarsh.sinks.base import Delivery


@dataclass(frozen=True, slots=True)
class CommandRecord:
    cmd_id: str
    device: str  # the target: the outcome's own, or the reporting envelope's device
    rollout: str
    site: str
    state: str
    rank: int
    final: bool
    hop: str | None
    reason: str | None
    result_json: str
    ts_ms: int  # when the reporting hop minted it
    received_ms: int  # when the ingester received it
    reported_by: str  # "device/boot/seq" of the envelope that carried it

    def to_doc(self) -> dict[str, object]:
        return {
            "cmd_id": self.cmd_id,
            "device": self.device,
            "rollout": self.rollout,
            "site": self.site,
            "state": self.state,
            "rank": self.rank,
            "final": self.final,
            "hop": self.hop,
            "reason": self.reason,
            "result": json.loads(self.result_json),
            "ts_ms": self.ts_ms,
            "received_ms": self.received_ms,
            "reported_by": self.reported_by,
        }


def command_records(deliveries: Sequence[Delivery]) -> list[CommandRecord]:
    records = []
    for delivery in deliveries:
        env = delivery.envelope
        outcome = env.cmd
        if env.kind is not Channel.CMDRES or outcome is None:
            continue
        records.append(
            CommandRecord(
                cmd_id=outcome.cmd_id,
                device=outcome.target or env.device,
                rollout=outcome.rollout,
                site=env.site,
                state=outcome.state.value,
                rank=outcome.state.rank,
                final=outcome.state.final,
                hop=None if outcome.hop is None else outcome.hop.value,
                reason=outcome.reason,
                result_json=json.dumps(dict(outcome.result), separators=(",", ":"), sort_keys=True),
                ts_ms=env.ts_ms,
                received_ms=delivery.received_ms,
                reported_by=f"{env.device}/{env.boot}/{env.seq}",
            )
        )
    return records
