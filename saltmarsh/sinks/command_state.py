"""Command state per target, as a sink keeps it: one record per (cmd_id, device), from `cmdres`.

In: the deliveries of a batch. Out: a `CommandRecord` for each command outcome among them,
which the sink upserts beside the message itself, in the same transaction. The rank rule is
the contract's (`saltmarsh.contract.command_state.advances`): a record replaces the stored one
only if its rank is higher and the stored one is not final, so a late or repeated outcome, or
one that overtook another on the way, never moves a target's state backwards.

Elasticsearch keeps the same rule with external versioning, `version` = rank: the cluster stores
a document only if its version is above the stored one's. That is the rank rule exactly because
every final state holds the top rank: nothing ranks above a final state, and an equal rank (a
second final, a duplicate, a second TIMED_OUT) never replaces. TIMED_OUT ranks below the final
states and is not final, so a late result replaces it in both sinks with nothing more.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from saltmarsh.contract.command_state import CommandState, advances
from saltmarsh.contract.topics import Channel
from saltmarsh.sinks.base import Delivery

_TOP_RANK = max(state.rank for state in CommandState)
# If a final state ever ranked below another state, version = rank would let that state replace
# it in Elasticsearch while SQLite kept it: the two sinks would disagree. Fail at import instead.
assert all(state.rank == _TOP_RANK for state in CommandState if state.final)


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

    @property
    def key(self) -> str:
        """The target's one place in a store: `cmd_id/device` (neither may hold a slash)."""
        return f"{self.cmd_id}/{self.device}"

    @property
    def version(self) -> int:
        """The external version Elasticsearch compares: the rank, for the reason the module gives."""
        return self.rank

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

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> CommandRecord:
        """A stored document back to the record `to_doc` made of it."""
        return cls(
            cmd_id=str(doc["cmd_id"]),
            device=str(doc["device"]),
            rollout=str(doc["rollout"]),
            site=str(doc["site"]),
            state=str(doc["state"]),
            rank=int(doc["rank"]),
            final=bool(doc["final"]),
            hop=None if doc.get("hop") is None else str(doc["hop"]),
            reason=None if doc.get("reason") is None else str(doc["reason"]),
            result_json=_result_json(doc.get("result") or {}),
            ts_ms=int(doc["ts_ms"]),
            received_ms=int(doc["received_ms"]),
            reported_by=str(doc["reported_by"]),
        )


def _result_json(result: Mapping[str, Any]) -> str:
    return json.dumps(dict(result), separators=(",", ":"), sort_keys=True)


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
                result_json=_result_json(outcome.result),
                ts_ms=env.ts_ms,
                received_ms=delivery.received_ms,
                reported_by=f"{env.device}/{env.boot}/{env.seq}",
            )
        )
    return records


def kept_per_target(records: Sequence[CommandRecord]) -> list[CommandRecord]:
    """Of one batch's records, the one per target that the rank rule keeps, applied in order.

    What the SQLite sink's upserts leave for the batch, decided before the write: Elasticsearch
    then gets one document per target, and no retry of one item can reorder two of the same
    target (a retried SUCCEEDED arriving after a CANCELED sent beside it would let the cancel win).
    """
    kept: dict[str, CommandRecord] = {}
    for record in records:
        stored = kept.get(record.key)
        if stored is None or advances(CommandState(stored.state), CommandState(record.state)):
            kept[record.key] = record
    return list(kept.values())
