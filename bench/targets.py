"""The issue's targets, each checked against one figure or ratio: pass, miss, or not measured."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

from bench.results import BenchReport, fmt


@dataclass(frozen=True, slots=True)
class Target:
    what: str
    bench: str
    figure: str
    op: str  # ">=" or "<="
    threshold: float
    unit: str

    def check(self, value: float) -> bool:
        compare: Callable[[float, float], bool] = operator.ge if self.op == ">=" else operator.le
        return compare(value, self.threshold)


TARGETS = (
    Target(
        "load generator + counter not the bottleneck (2x forwarder target)", "ceiling", "msg/s", ">=", 40_000, "msg/s"
    ),
    Target("forwarder crash-safe throughput", "forwarder", "ours msg/s", ">=", 20_000, "msg/s"),
    Target("forwarder vs bridge (a) default", "forwarder", "ours/(a) msg/s", ">=", 1.0, "x"),
    Target("forwarder vs bridge (b) crash-safe", "forwarder", "ours/(b) msg/s", ">=", 20.0, "x"),
    Target("forwarder CPU per message", "forwarder", "ours CPU/msg", "<=", 30.0, "us/msg"),
    Target("forwarder peak RSS, 0..1M buffered", "drain", "forwarder peak RSS (VmHWM)", "<=", 60.0, "MB"),
    Target("forwarder RSS at 1M buffered", "drain", "forwarder RSS at 1M buffered", "<=", 60.0, "MB"),
    Target("drain 1M backlog", "drain", "ours drain time", "<=", 60.0, "s"),
    Target("live p99 during the drain", "drain", "live latency p99", "<=", 1000.0, "ms"),
    Target("ingester throughput into SQLite", "ingester", "sqlite readings/s", ">=", 30_000, "readings/s"),
    Target("ingester CPU per reading", "ingester", "sqlite CPU/reading", "<=", 30.0, "us/reading"),
    Target("sensor agent RSS at 1 Hz", "sensor", "ours peak RSS (VmHWM)", "<=", 40.0, "MB"),
    Target("sensor agent CPU at 1 Hz", "sensor", "ours CPU", "<=", 1.0, "%"),
    Target(
        "gateway CPU/msg vs native bridge at 100 msg/s", "site_rate", "gateway total/native at 100/s", "<=", 1.0, "x"
    ),
    Target(
        "gateway CPU/msg vs native bridge at 1,000 msg/s",
        "site_rate",
        "gateway total/native at 1,000/s",
        "<=",
        1.0,
        "x",
    ),
    Target("forwarder idle CPU", "site_rate", "forwarder idle CPU", "<=", 0.1, "%"),
    Target("readings lost across a forwarder outage", "forwarder_outage", "ours lost", "<=", 0, "readings"),
    Target(
        "gateway broker queue during a forwarder outage",
        "forwarder_outage",
        "ours broker stored peak",
        "<=",
        10_100,  # 10 sensors x their 1,000-message window, and their probes
        "messages",
    ),
    Target("readings lost in a sink outage", "sink_outage", "ours lost", "<=", 0, "readings"),
    Target(
        "forwarder unconfirmed in a sink outage (its window)",
        "sink_outage",
        "forwarder unconfirmed max",
        "<=",
        20_000,
        "messages",
    ),
    Target(
        "cloud broker RSS growth, 5 min sink outage at 1,000 msg/s",
        "sink_outage",
        "cloud broker RSS growth in a 5 min outage",
        "<=",
        20.0,
        "MB",
    ),
    Target("drain after a 5 min sink outage", "sink_outage", "drain time after a 5 min outage", "<=", 120.0, "s"),
    Target(
        "commands run twice, at 10 and 100/s and across a gateway outage",
        "commands",
        "ours run twice",
        "<=",
        0,
        "commands",
    ),
    Target("commands lost across a 5 min gateway outage", "commands", "ours drain lost", "<=", 0, "commands"),
    Target("drain of 10,000 commands after a 5 min gateway outage", "commands", "ours drain time", "<=", 120.0, "s"),
    Target(
        "BLE collector CPU/advertisement vs a bare bleak loop, 200 devices every 2 s",
        "ble",
        "ours/peer CPU/advertisement at 200 devices / 2 s",
        "<=",
        2.0,
        "x",
    ),
    Target("BLE collector RSS, 200 devices every 2 s", "ble", "ours RSS at 200 devices / 2 s", "<=", 40.0, "MB"),
    Target("power cuts of the gateway VM", "powercut", "gateway VM power cuts", ">=", 10, "cuts"),
    Target("readings lost across the gateway VM's power cuts", "powercut", "gateway VM lost", "<=", 0, "readings"),
    Target(
        "readings stored twice across the gateway VM's power cuts",
        "powercut",
        "gateway VM duplicated in the sink",
        "<=",
        0,
        "readings",
    ),
    Target("spools corrupt after a gateway VM power cut", "powercut", "gateway VM corrupt spools", "<=", 0, "spools"),
    Target("readings lost across the sensor VM's power cuts", "powercut", "sensor VM lost", "<=", 0, "readings"),
    Target(
        "readings stored twice across the sensor VM's power cuts",
        "powercut",
        "sensor VM duplicated in the sink",
        "<=",
        0,
        "readings",
    ),
)


@dataclass(frozen=True, slots=True)
class Verdict:
    target: Target
    value: float
    mode: str  # the mode of the run the figure came from

    @property
    def status(self) -> str:
        if math.isnan(self.value):
            return "not measured"
        return "pass" if self.target.check(self.value) else "MISS"


def verdicts(reports: dict[str, BenchReport]) -> list[Verdict]:
    out = []
    for target in TARGETS:
        report = reports.get(target.bench)
        fig = report.figure(target.figure) if report else None
        value = fig.value if fig is not None else math.nan
        out.append(Verdict(target, value, report.env.mode if report else "-"))
    return out


def render_targets(items: list[Verdict]) -> str:
    lines = ["## Targets", "", "| target | goal | measured | result | mode |", "|---|---|---:|---|---|"]
    for v in items:
        t = v.target
        lines.append(f"| {t.what} | {t.op} {fmt(t.threshold)} {t.unit} | {fmt(v.value)} | {v.status} | {v.mode} |")
    return "\n".join(lines) + "\n"


def print_targets(items: list[Verdict]) -> None:
    print("\nTargets")
    for v in items:
        t = v.target
        print(f"  {v.status:>12}  {t.what}: {fmt(v.value)} {t.unit} (goal {t.op} {fmt(t.threshold)}) [{v.mode}]")
