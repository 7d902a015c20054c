"""A rollout's way out and its answers back, on the master: the store's due targets signed and
published on the cloud broker, and each target's state read back from the sink.

In: a `RolloutStore`, the signing key, something that publishes (topic, payload, seconds left)
at QoS 1, and something that reads the sink's command state for a rollout. Out: the store kept
up to date; `step` returns how many commands it published.

Each target's command is built from the rollout, the same bytes every time it is sent (the
`cmd_id`, `issued_at` and deadline are the rollout's), so a resend is the same command: the
gateway and the device recognise it, and run it once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from saltmarsh.commands.rollout import RolloutStore
from saltmarsh.contract.command import Command
from saltmarsh.contract.command_state import CommandState, Hop
from saltmarsh.contract.signature import sign
from saltmarsh.sinks.command_state import CommandRecord

Publish = Callable[[str, bytes, int], None]  # topic, payload, seconds left (MQTT 5 message expiry)
ReadStates = Callable[[str], Sequence[CommandRecord]]


class Dispatcher:
    def __init__(
        self,
        store: RolloutStore,
        key: Ed25519PrivateKey,
        publish: Publish,
        read_states: ReadStates,
        *,
        resend_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.key = key
        self.publish = publish
        self.read_states = read_states
        self.resend_s = resend_s
        self.clock = clock
        self.published_total = 0

    def step(self, rollout: str) -> int:
        """Read the answers, time out what is overdue, then publish what is due now."""
        self.collect(rollout)
        now_ms = int(self.clock() * 1000)
        self.store.time_out(rollout, now_ms)
        spec = self.store.spec(rollout)
        due = self.store.due(rollout, now_ms, resend_s=self.resend_s)
        for pending in due:
            cmd = Command(
                cmd_id=pending.cmd_id,
                rollout=spec.rollout,
                site=pending.target.site,
                device=pending.target.device,
                op=spec.op,
                args=spec.args,
                issued_at_ms=spec.created_ms,
                not_after_ms=spec.not_after_ms,
                run_timeout_s=spec.run_timeout_s,
                coalesce=spec.coalesce,
            )
            seconds_left = max(1, -(-(spec.not_after_ms - now_ms) // 1000))
            self.publish(str(cmd.topic), sign(cmd, self.key).encode(), seconds_left)
        self.store.mark_sent([p.cmd_id for p in due], now_ms)
        self.published_total += len(due)
        return len(due)

    def collect(self, rollout: str) -> None:
        collect(self.store, rollout, self.read_states(rollout))


def collect(store: RolloutStore, rollout: str, records: Sequence[CommandRecord]) -> None:
    """The sink's state of each target (written by the ingesters from cmdres) into the store."""
    outcomes: dict[str, tuple[CommandState, str | None, str | None, int]] = {}
    for record in records:
        hop = None if record.hop is None else Hop(record.hop).value
        outcomes[record.device] = (CommandState(record.state), hop, record.reason, record.received_ms)
    store.record(rollout, outcomes)
