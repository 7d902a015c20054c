"""The forwarder's small pure parts: lanes, batches, the ETA, and the CLI's refusal of bad config."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.service import drain_eta_s, main
from gateway.source import LocalSource, lane_for, subscription_filter
from saltmarsh.config.gateway import gateway_config
from saltmarsh.config.table import Table
from saltmarsh.mqtt.codec import Publish
from saltmarsh.runtime.spool import Lane


@pytest.mark.parametrize(
    ("topic", "lane"),
    [
        ("saltmarsh/v1/s/d/reading", Lane.BULK),
        ("saltmarsh/v1/s/d/event", Lane.KEEP),
        ("saltmarsh/v1/s/d/alert", Lane.KEEP),
        ("saltmarsh/v1/s/d/cmdres", Lane.KEEP),  # a command outcome is never evicted
        ("saltmarsh/v1/s/d/status", None),
        ("saltmarsh/v1/s/d/cmd", None),
        ("saltmarsh/v1/s/d/readings", Lane.BULK),  # unknown channels go up and get dead-lettered
        ("saltmarsh/v1/s/d/x/y", Lane.BULK),
        ("saltmarsh/v1/s/d", Lane.BULK),
    ],
)
def test_lane_for(topic: str, lane: Lane | None) -> None:
    assert lane_for(topic) is lane


@pytest.mark.parametrize(("site", "topic_filter"), [("+", "saltmarsh/v1/+/#"), ("marsh-3", "saltmarsh/v1/marsh-3/#")])
def test_subscription_filter(site: str, topic_filter: str) -> None:
    assert subscription_filter(site) == topic_filter


def test_batches_keep_arrival_order_per_lane_and_skip_local_channels(tmp_path: Path) -> None:
    cfg = gateway_config(
        Table(
            {"gateway_id": "g", "state_dir": str(tmp_path), "status_dir": str(tmp_path), "local": {}, "uplink": {}},
            "test",
        )
    )
    source = LocalSource(cfg)
    source.take(
        [
            Publish("s/d/reading", b"1", 1, 11, False, False, ()),
            Publish("s/d/alert", b"2", 1, 12, False, False, ()),
            Publish("s/d/status", b"3", 1, 13, False, False, ()),
            Publish("s/d/reading", b"4", 0, 0, False, False, ()),
            Publish("s/d/event", b"5", 1, 14, False, False, ()),
        ],
        now=1.0,
    )
    batch = source.cut()
    assert batch is not None
    assert batch.lanes() == [
        (Lane.BULK, [("s/d/reading", b"1"), ("s/d/reading", b"4")]),
        (Lane.KEEP, [("s/d/alert", b"2"), ("s/d/event", b"5")]),
    ]
    assert batch.packet_ids == [11, 12, 14]
    assert (source.received_total, source.skipped_total) == (4, 1)
    assert source.cut() is None
    assert source.ack(batch) == 0, "not connected: nothing to ack on"


@pytest.mark.parametrize(
    ("depth", "measured", "limit", "eta"),
    [
        (0, 0.0, 100.0, 0.0),
        (1000, 0.0, 100.0, 10.0),  # nothing measured yet: assume the limit
        (1000, 50.0, 100.0, 20.0),  # the uplink is slower than the limit
        (1000, 200.0, 100.0, 5.0),
        (1, 3.0, 100.0, 0.3),
    ],
)
def test_drain_eta(depth: int, measured: float, limit: float, eta: float) -> None:
    assert drain_eta_s(depth, measured, limit) == eta


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (
            'gateway_id = "g"\nstate_dir = "/tmp/s"\nstatus_dir = "/tmp/t"\n[local]\n[uplink]\nquota_byte = 5\n',
            "quota_byte",
        ),
        ('gateway_id = "bad id"\n', "gateway_id"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_config_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, named: str
) -> None:
    path = tmp_path / "forwarder.toml"
    path.write_text(text)
    assert main(["--config", str(path)]) == 2
    assert named in capsys.readouterr().err


def test_missing_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "absent.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err
