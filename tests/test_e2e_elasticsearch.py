"""`saltmarsh demo --sink elasticsearch`: the same fleet, outage and audit, with Elasticsearch as the store.

Runs against osmem-server here, and against a real cluster too when SALTMARSH_TEST_ES_URL is set.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from saltmarsh.ops import cli
from saltmarsh.ops.localfleet.fleet import FleetPlan, ble_site
from tests import es_support
from tests.es_support import EsBackend

pytestmark = pytest.mark.slow
es_backend = es_support.es_backend  # osmem, plus a real cluster when SALTMARSH_TEST_ES_URL is set


def test_demo_with_elasticsearch_audits_clean(
    es_backend: EsBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if es_backend.api_key:
        pytest.skip("the demo passes no credentials; run it by hand against a secured cluster")
    argv = ["demo", "--sink", "elasticsearch", "--es-url", es_backend.url, "--dir", str(tmp_path / "demo")]
    argv += ["--sensors", "2", "--rate", "10", "--duration", "8", "--outage", "3"]
    if es_backend.node_class is not None:
        argv.append("--es-plain-json")
    code = cli.main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"ingester -> elasticsearch {es_backend.url}" in out
    # 2 sensors x 80, and what the demo's 4 BLE thermometers (its default) measured in those 8 s.
    _, _, taken = ble_site(FleetPlan(tmp_path, readings_per_sensor=80, rate_hz=10, ble_devices=4))
    assert f"{160 + sum(len(m) for m in taken.values())} readings, 0 lost, 0 duplicated" in out, out
