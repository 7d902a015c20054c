"""Driving a LocalFleet in the reliability tests: run, disturb, wait, audit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from saltmarsh.ops.audit import AuditReport
from saltmarsh.ops.localfleet.fleet import FleetPlan, LocalFleet
from saltmarsh.ops.localfleet.processes import ServiceProcess


def wait_until_audited(fleet: LocalFleet, timeout_s: float, killed: tuple[ServiceProcess, ...] = ()) -> AuditReport:
    """Wait for every sensor to finish and the sink to hold everything, then audit; any process
    but those the test `killed` itself must still be running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        crashed = [p for p in fleet.processes() if p.returncode() not in (None, 0) and p not in killed]
        assert not crashed, "\n".join(f"{p.name} exited {p.returncode()}:\n{p.log_tail()}" for p in crashed)
        if fleet.sensors_done():
            report = fleet.audit_if_stored()
            if report is not None and report.ok:
                return report
        time.sleep(0.5)
    return fleet.audit()


def kill9_and_restart(fleet: LocalFleet, process: ServiceProcess, times: int, up_s: float, down_s: float) -> None:
    """The crash under test, `times` over: `up_s` running, kill -9, `down_s` dead, started again."""
    for _ in range(times):
        time.sleep(up_s)
        process.kill9()
        time.sleep(down_s)
        fleet.restart(process)


@contextmanager
def running_fleet(base_dir: Path, **plan_args: object) -> Iterator[LocalFleet]:
    fleet = LocalFleet.fresh(FleetPlan(base_dir=base_dir, **plan_args))  # type: ignore[arg-type]
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()
