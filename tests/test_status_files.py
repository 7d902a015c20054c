"""Status files: what one service writes, another finds by service and instance."""

from __future__ import annotations

from pathlib import Path

import pytest

from saltmarsh.runtime.status import find_status, read_status_dir, read_statuses, write_status

WRITTEN = [("forwarder", "gw1", 1), ("ingester", "ing-1", 2), ("ingester", "ing-2", 3), ("sensor", "pi-1", 4)]

# service, instance asked for, the `n` counter of the file found (None: no such file)
LOOKUPS = [
    ("forwarder", None, 1),
    ("forwarder", "gw1", 1),
    ("forwarder", "gw2", None),
    ("ingester", "ing-2", 3),
    ("ingester", None, 2),  # the first in name order
    ("sensor", "pi-1", 4),
    ("relay", None, None),
]


@pytest.fixture
def status_dir(tmp_path: Path) -> Path:
    for service, instance, n in WRITTEN:
        write_status(tmp_path, service, instance, {"n": n})
    (tmp_path / "torn.json").write_text('{"service": "sensor"')  # being replaced, or not ours
    return tmp_path


@pytest.mark.parametrize(("service", "instance", "expected"), LOOKUPS)
def test_find_status(status_dir: Path, service: str, instance: str | None, expected: int | None) -> None:
    found = find_status(status_dir, service, instance)
    assert (found.counters["n"] if found is not None else None) == expected


def test_read_statuses_skips_unreadable_files_and_a_missing_directory(status_dir: Path) -> None:
    assert [s.name for s in read_statuses(status_dir)] == [
        "forwarder-gw1",
        "ingester-ing-1",
        "ingester-ing-2",
        "sensor-pi-1",
    ]
    assert read_statuses(status_dir / "missing") == []
    assert read_status_dir(status_dir)[1] == [status_dir / "torn.json"]
