"""A service's counters in Prometheus text format, for node_exporter's textfile collector.

In: a service's name and instance, and the counters of its status snapshot (the same ones
`saltmarsh status` shows).
Out: `<metrics_dir>/saltmarsh_<service>_<instance>.prom`, rewritten atomically (prometheus_client's
`write_to_textfile`) each time the status file is.

A textfile rather than a /metrics port of each service's own: a Pi runs three or four saltmarsh
services, and node_exporter, which a fleet already scrapes, serves their files on its one port.
The services listen on nothing, need no HTTP thread, and keep their network exposure to MQTT. A
stopped service's file stays, with `status_updated_seconds` saying how old it is, which is what an
alert on a dead service needs.

Numbers become gauges, `*_total` counters become counters, booleans 0 or 1; text counters (boot
id, acknowledgement mode, ...) become the labels of one `saltmarsh_<service>_info` metric.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "saltmarsh"
_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
MAX_LABEL_CHARS = 200


def metrics_path(directory: Path, service: str, instance: str) -> Path:
    # node_exporter reads only *.prom; one file per service instance, like the status files.
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", instance)
    return directory / f"{PREFIX}_{service}_{safe}.prom"


def metric_families(service: str, instance: str, counters: Mapping[str, Any], updated_s: float) -> list[Metric]:
    """The Prometheus families for one snapshot; counters that are not numbers, flags or text are left out."""
    base = f"{PREFIX}_{service}"
    families: list[Metric] = []
    info: dict[str, str] = {}
    for name, raw in sorted(counters.items()):
        if not _NAME.match(name):
            continue
        value = int(raw) if isinstance(raw, bool) else raw
        if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
            metric_name = f"{base}_{name}"
            family: Metric
            if name.endswith("_total"):
                family = CounterMetricFamily(metric_name, f"{service} {name}", labels=["instance"])
            else:
                family = GaugeMetricFamily(metric_name, f"{service} {name}", labels=["instance"])
            family.add_metric([instance], float(value))
            families.append(family)
        elif isinstance(value, str) and name != "instance":
            info[name] = value[:MAX_LABEL_CHARS]
    updated = GaugeMetricFamily(f"{base}_status_updated_seconds", "when these counters were taken", labels=["instance"])
    updated.add_metric([instance], updated_s)
    families.append(updated)
    if info:
        described = InfoMetricFamily(base, f"{service} identity and modes", labels=["instance"])
        described.add_metric([instance], info)
        families.append(described)
    return families


class _Snapshot(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def write_metrics(directory: Path, service: str, instance: str, counters: Mapping[str, Any], updated_s: float) -> Path:
    """Write one snapshot's .prom file (atomically: a scrape never sees half of it)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(metric_families(service, instance, counters, updated_s)))
    directory.mkdir(parents=True, exist_ok=True)
    path = metrics_path(directory, service, instance)
    write_to_textfile(str(path), registry)
    return path
