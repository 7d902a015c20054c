"""Status counters as Prometheus text: read back with prometheus_client's own parser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from saltmarsh.runtime.metrics import metrics_path, write_metrics
from saltmarsh.runtime.status import StatusPublisher


def _parsed(path: Path) -> dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]:
    """family name -> (type, [(sample name, labels, value)])."""
    return {
        family.name: (family.type, [(s.name, dict(s.labels), s.value) for s in family.samples])
        for family in text_string_to_metric_families(path.read_text())
    }


# counters -> {family: (type, sample name, value)}; families not listed must be absent
CASES: dict[str, tuple[dict[str, Any], dict[str, tuple[str, str, float] | None]]] = {
    "gauge": (
        {"spool_depth": 12},
        {"saltmarsh_forwarder_spool_depth": ("gauge", "saltmarsh_forwarder_spool_depth", 12)},
    ),
    "counter": (
        {"evicted_total": 3},
        {"saltmarsh_forwarder_evicted": ("counter", "saltmarsh_forwarder_evicted_total", 3)},
    ),
    "flag": (
        {"uplink_connected": True},
        {"saltmarsh_forwarder_uplink_connected": ("gauge", "saltmarsh_forwarder_uplink_connected", 1)},
    ),
    "float": (
        {"oldest_unconfirmed_age_s": 1.5},
        {
            "saltmarsh_forwarder_oldest_unconfirmed_age_s": (
                "gauge",
                "saltmarsh_forwarder_oldest_unconfirmed_age_s",
                1.5,
            )
        },
    ),
    "none and nan left out": (
        {"drain_eta_s": None, "live_rate": float("nan")},
        {"saltmarsh_forwarder_drain_eta_s": None, "saltmarsh_forwarder_live_rate": None},
    ),
    "a name Prometheus cannot take": ({"bad-name": 1}, {"saltmarsh_forwarder_bad-name": None}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_counters_become_families(tmp_path: Path, case: str) -> None:
    counters, expected = CASES[case]
    path = write_metrics(tmp_path, "forwarder", "gw1", counters, 1_800_000_000.0)
    parsed = _parsed(path)
    for family, want in expected.items():
        if want is None:
            assert family not in parsed
            continue
        kind, sample, value = want
        assert parsed[family] == (kind, [(sample, {"instance": "gw1"}, value)])
    assert parsed["saltmarsh_forwarder_status_updated_seconds"][1][0][2] == 1_800_000_000.0


def test_text_counters_become_one_info_metric(tmp_path: Path) -> None:
    path = write_metrics(tmp_path, "sensor", "s1", {"boot": "b-1", "acknowledgement": "end-to-end", "last_seq": 4}, 1.0)
    parsed = _parsed(path)
    # The text format has no info type: an info metric is a gauge of 1 named *_info.
    assert parsed["saltmarsh_sensor_info"] == (
        "gauge",
        [("saltmarsh_sensor_info", {"instance": "s1", "boot": "b-1", "acknowledgement": "end-to-end"}, 1.0)],
    )
    assert parsed["saltmarsh_sensor_last_seq"][1][0][2] == 4


def test_file_name_is_one_per_instance_and_safe(tmp_path: Path) -> None:
    assert metrics_path(tmp_path, "sensor", "s1").name == "saltmarsh_sensor_s1.prom"
    assert metrics_path(tmp_path, "sensor", "../x y").name == "saltmarsh_sensor_.._x_y.prom"
    assert metrics_path(tmp_path, "sensor", "../x y").parent == tmp_path


def test_status_publisher_writes_metrics_beside_status(tmp_path: Path) -> None:
    counters = {"spool_depth": 1}
    publisher = StatusPublisher(
        tmp_path / "status", "forwarder", "gw1", lambda: dict(counters), metrics_dir=tmp_path / "metrics"
    )
    publisher.write()
    counters["spool_depth"] = 7
    publisher.write()
    assert (tmp_path / "status" / "forwarder-gw1.json").exists()
    parsed = _parsed(tmp_path / "metrics" / "saltmarsh_forwarder_gw1.prom")
    assert parsed["saltmarsh_forwarder_spool_depth"][1][0][2] == 7
    assert not list((tmp_path / "metrics").glob("*.tmp*")), "written atomically, nothing left behind"


def test_a_metrics_dir_that_cannot_be_written_does_not_stop_the_status(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    publisher = StatusPublisher(
        tmp_path / "status", "forwarder", "gw1", lambda: {"spool_depth": 2}, metrics_dir=blocked
    )
    publisher.write()
    publisher.write()
    assert (tmp_path / "status" / "forwarder-gw1.json").exists()


def test_periodic_writes_renew_the_metrics_file_at_most_every_interval(tmp_path: Path) -> None:
    counters = {"spool_depth": 1}
    publisher = StatusPublisher(
        tmp_path / "status", "forwarder", "gw1", lambda: dict(counters), metrics_dir=tmp_path / "metrics"
    )
    publisher.write()
    counters["spool_depth"] = 7
    publisher.write(only_if_changed=True)  # what the status thread does each second
    assert '"spool_depth": 7' in (tmp_path / "status" / "forwarder-gw1.json").read_text()
    parsed = _parsed(tmp_path / "metrics" / "saltmarsh_forwarder_gw1.prom")
    assert parsed["saltmarsh_forwarder_spool_depth"][1][0][2] == 1, "rewritten only after METRICS_INTERVAL_S"
