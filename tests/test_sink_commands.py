"""The SQLite sink keeps each target's command state beside the cmdres messages, only ever moving
it forward, whatever order or how many times the outcomes arrive, in one batch or in many."""

from __future__ import annotations

from pathlib import Path

import pytest

from saltmarsh.contract.command_state import CommandOutcome, CommandState, Hop
from saltmarsh.contract.mint import mint_cmdres
from saltmarsh.sinks.base import Delivery
from saltmarsh.sinks.sqlite import SqliteSink

CMD = "01HF7YAT00XGHYZ3KT8V94F16P"
S = CommandState


def delivery(state: CommandState, seq: int, *, device: str = "pi-1", target: str | None = None) -> Delivery:
    outcome = CommandOutcome(
        CMD,
        "r-1",
        state,
        hop=Hop.GATEWAY if state is S.EXPIRED else None,
        reason="superseded" if state is S.CANCELED else None,
        result={"seq": seq} if state is S.SUCCEEDED else {},
        target=target,
    )
    env = mint_cmdres(device=device, site="marsh", boot="b1", seq=seq, ts_ms=1_700_000_000_000 + seq, outcome=outcome)
    return Delivery(env, received_ms=1_700_000_000_500 + seq)


SEQUENCES = {
    "in order": ([S.RUNNING, S.SUCCEEDED], S.SUCCEEDED),
    "a late lower state": ([S.SUCCEEDED, S.RUNNING], S.SUCCEEDED),
    "a late result after the timeout": ([S.RUNNING, S.TIMED_OUT, S.SUCCEEDED], S.SUCCEEDED),
    "a timeout after the result": ([S.SUCCEEDED, S.TIMED_OUT], S.SUCCEEDED),
    "the first final stands": ([S.SUCCEEDED, S.CANCELED], S.SUCCEEDED),
    "a cancel that came first": ([S.CANCELED, S.SUCCEEDED], S.CANCELED),
    "the gateway's then the device's": ([S.AT_GATEWAY, S.DELIVERED, S.RUNNING, S.FAILED], S.FAILED),
    "expired at the gateway": ([S.AT_GATEWAY, S.EXPIRED, S.RUNNING], S.EXPIRED),
    "a duplicate": ([S.SUCCEEDED, S.SUCCEEDED], S.SUCCEEDED),
}


@pytest.mark.parametrize("one_batch", [True, False], ids=["one batch", "a batch each"])
@pytest.mark.parametrize("name", SEQUENCES)
def test_a_targets_state_only_moves_forward(tmp_path: Path, name: str, one_batch: bool) -> None:
    states, expected = SEQUENCES[name]
    deliveries = [delivery(state, seq) for seq, state in enumerate(states, start=1)]
    sink = SqliteSink(tmp_path / "sink.db")
    try:
        for batch in [deliveries] if one_batch else [[d] for d in deliveries]:
            sink.write(batch, [])
        sink.write(deliveries, [])  # and everything again, as a replayed batch would be
        (record,) = sink.command_states("r-1")
        assert (record.cmd_id, record.device, record.state) == (CMD, "pi-1", expected.value), name
        winner = next(seq for seq, state in enumerate(states, start=1) if state is expected)
        assert record.reported_by == f"pi-1/b1/{winner}"
        assert sum(1 for _ in sink.stored_keys()) == len(states)  # every message kept, once
    finally:
        sink.close()


def test_a_gateway_reports_for_its_device_on_its_own_sequence(tmp_path: Path) -> None:
    sink = SqliteSink(tmp_path / "sink.db")
    try:
        sink.write(
            [
                delivery(S.EXPIRED, 9, device="gw-1", target="pi-1"),
                delivery(S.AT_GATEWAY, 3, device="gw-1", target="pi-2"),
            ],
            [],
        )
        got = {(r.device, r.state, r.hop, r.reported_by) for r in sink.command_states()}
        assert got == {("pi-1", "expired", "gateway", "gw-1/b1/9"), ("pi-2", "at_gateway", None, "gw-1/b1/3")}
        assert sink.command_states("another") == []
    finally:
        sink.close()
