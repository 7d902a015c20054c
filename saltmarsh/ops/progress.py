"""One line of live progress for long CLI work, from the services' status files."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from saltmarsh.runtime.status import ServiceStatus


def _sum(statuses: Sequence[ServiceStatus], key: str) -> float:
    return sum(float(s.counters.get(key, 0) or 0) for s in statuses)


def _first(statuses: Sequence[ServiceStatus], key: str, default: Any = 0) -> Any:
    return next((s.counters.get(key, default) for s in statuses), default)


def fleet_progress_line(elapsed_s: float, statuses: Sequence[ServiceStatus], expected_total: int) -> str:
    sensors = [s for s in statuses if s.service == "sensor"]
    forwarders = [s for s in statuses if s.service == "forwarder"]
    ingesters = [s for s in statuses if s.service == "ingester"]
    uplink = "up" if all(bool(s.counters.get("uplink_connected")) for s in forwarders) and forwarders else "DOWN"
    eta = _first(forwarders, "drain_eta_s", None)
    eta_text = "-" if eta in (None, 0) else f"{float(eta):.0f}s"
    return (
        f"t={elapsed_s:4.0f}s  sensors {_sum(sensors, 'publish_rate'):6.1f}/s"
        f" made {_sum(sensors, 'readings_total'):.0f}"
        f"{_ble_text(statuses)}"
        f"  | gateway spool {_sum(forwarders, 'spool_depth'):.0f} oldest {_sum(forwarders, 'oldest_unsent_age_s'):.1f}s"
        f" uplink {uplink} drain {_sum(forwarders, 'drain_rate'):.0f}/s eta {eta_text}"
        f" evicted {_sum(forwarders, 'evicted_total'):.0f}"
        f"  | ingested {_sum(ingesters, 'written_total'):.0f}/{expected_total}"
        f" dup {_sum(ingesters, 'duplicates_total'):.0f} dead {_sum(ingesters, 'dead_letters_total'):.0f}"
    )


def _ble_text(statuses: Sequence[ServiceStatus]) -> str:
    """A BLE collector's part of the line ('' without one): readings minted, and its spool."""
    collectors = [s for s in statuses if s.service == "ble"]
    if not collectors:
        return ""
    return f"  ble {_sum(collectors, 'readings_total'):.0f} spool {_sum(collectors, 'spool_depth'):.0f}"
